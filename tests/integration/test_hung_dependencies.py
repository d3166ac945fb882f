"""Hung, not gone: a server stopped with SIGSTOP keeps its TCP connections open and
answers nothing. Health must say so within a bound (the projector's and the
snapshotter's /healthz 503, the query service NOT_SERVING) and come back on its own
after SIGCONT, with the connection still working. The chaos rows ``pause-*``
(tests/chaos/pauses.py) show the same on the whole stack under load."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from grpc_health.v1 import health_pb2

from jetsource.core.aio import stop_task
from jetsource.core.settings import GraphSettings, JetsourceSettings, NatsSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.projection import graph as graph_module
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.contract import TransientError
from jetsource.projection.host import ProjectorService
from jetsource.query.server import build, follow_stores
from jetsource.query.settings import QueryOptions, QuerySettings
from tests.infra import Server, _embedded
from tests.projector_fixtures import projector_settings, seed, story_ids

pytestmark = pytest.mark.integration

NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING: int = health_pb2.HealthCheckResponse.SERVING


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def stop_now(pid: int) -> None:
    """SIGSTOP ``pid`` and return once the kernel has stopped it: the signal is
    delivered asynchronously, and a server thread running on the other core answered a
    PING sent right after ``kill`` (the probe then saw NATS answer, about one run in
    five on this machine)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.005)


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[Server]:
    server = _embedded(NatsServer(tmp_path / "nats", port=free_port(), monitor_port=free_port()))
    yield server
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)  # a stopped server cannot exit
    server.stop()


async def test_health_follows_a_hung_nats_server(
    settings: JetsourceSettings, unique: str, private_nats: Server
) -> None:
    proc = private_nats.proc
    assert proc is not None
    base = settings.model_copy(update={"nats": NatsSettings(url=private_nats.url)})
    ps = projector_settings(base, unique, models=["context"])
    p = await open_projection(ps)
    service = ProjectorService(p)
    await service.sync()
    query = await build(
        QuerySettings(
            **{
                k: getattr(ps, k)
                for k in ("nats", "valkey", "graph", "eventstore", "snapshots", "projector")
            },
            query=QueryOptions(grpc_port=0, metrics_port=0),  # not make up's 50052
        )
    )
    watcher = asyncio.create_task(follow_stores(query, 0.2))

    async def query_status() -> int:
        answer = await query.grpc.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        return int(answer.status)

    async def query_is(status: int) -> bool:
        return await query_status() == status

    try:
        await service.probe()
        assert service.healthy() and not service.unreachable
        await eventually(lambda: query_is(SERVING))

        stop_now(proc.pid)
        try:
            # The client still says connected: only a round trip tells.
            assert p.nc.is_connected
            started = time.monotonic()
            await service.probe()  # probes wait 2 s for an answer
            assert "nats" in service.unreachable, service.unreachable
            assert not service.healthy()
            assert time.monotonic() - started < 5
            # A second probe waits for the same PING (none piles up), still down.
            await service.probe()
            assert "nats" in service.unreachable
            await eventually(lambda: query_is(NOT_SERVING), timeout=10)
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        async def projector_healthy() -> bool:
            await service.probe()
            return service.healthy()

        assert await eventually(projector_healthy, timeout=10) < 10
        await eventually(lambda: query_is(SERVING), timeout=10)
        # The connection reads again (a flush that timed out would have killed the
        # client's read loop when its PONG came: connected, and deaf).
        info = await asyncio.wait_for(p.store.stream_info(), 5)
        assert info["config"]["name"] == ps.eventstore.stream
    finally:
        assert await stop_task(watcher), "the store watcher did not stop"
        await query.stop(0)
        await p.close()


class FreezingProxy:
    """A TCP forwarder to ``target``. :meth:`freeze` black-holes the connections open
    at that moment (kept open, nothing forwarded either way: what a connection the
    network lost without a FIN or RST looks like); later connections forward."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen: set[int] = set()
        self.open: set[int] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self) -> int:
        self.frozen |= self.open
        return len(self.open)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        conn = id(writer)
        self.open.add(conn)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(conn, src, dst))
            self.tasks.add(task)

    async def _pump(self, conn: int, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while conn not in self.frozen:
            data = await src.read(65536)
            if not data or conn in self.frozen:
                break
            dst.write(data)
            await dst.drain()
        if conn in self.frozen:
            await asyncio.Event().wait()  # hold the socket open, answer nothing
        dst.close()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()


async def test_graph_worker_recovers_from_a_connection_lost_silently(
    settings: JetsourceSettings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph driver has no read timeout (ArcadeDB hints none): a connection the
    network dropped silently blocked the graph worker for ever, the store itself
    healthy. A call unanswered for ``graph.IO_TIMEOUT_S`` is now a transient failure:
    the batch comes again and the driver opens a new connection."""
    monkeypatch.setattr(graph_module, "IO_TIMEOUT_S", 2.0, raising=False)
    assert settings.graph.uri is not None
    host, _, port = settings.graph.uri.rpartition("/")[2].partition(":")
    proxy = FreezingProxy(host, int(port))
    proxied = f"bolt://127.0.0.1:{await proxy.start()}"
    base = settings.model_copy(update={"graph": settings.graph.model_copy(update={"uri": proxied})})
    assert isinstance(base.graph, GraphSettings)
    ps = projector_settings(base, unique, models=["graph"])
    p = await open_projection(ps)
    service = ProjectorService(p)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    # Read through a connection of its own, not through the proxy.
    reader = await open_projection(projector_settings(settings, unique, models=["graph"]))
    model = reader.model("graph", 1)

    async def applied(n: int) -> bool:
        # The reader shares the 2 s limit set above: under load one of its reads can
        # run out, which says nothing about the worker; ask again.
        try:
            return (await model.checkpoint()).applied >= n
        except TransientError:
            return False

    try:
        await seed(p.store, story_ids(4, "a"), 10)
        await eventually(lambda: applied(40), timeout=30)
        assert proxy.freeze() > 0
        await seed(p.store, story_ids(4, "b"), 10)
        took = await eventually(lambda: applied(80), timeout=30)
        assert took < 30
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await p.close()
        await proxy.stop()
        await model.drop()
        await reader.close()


async def test_a_round_trip_that_times_out_leaves_the_connection_working(
    private_nats: Server,
) -> None:
    """``core.natsping.round_trip`` (what the erasure announcement waits on, instead of
    ``nc.flush``): a hung server makes it say no in time; after SIGCONT the late PONG
    does no harm and the same connection reads and writes (a timed-out flush left it
    connected and deaf on nats-py 2.16)."""
    from jetsource.core.natsping import round_trip

    proc = private_nats.proc
    assert proc is not None
    nc = await nats.connect(private_nats.url)
    try:
        sub = await nc.subscribe("x.>")
        assert await round_trip(nc, 2)
        stop_now(proc.pid)
        try:
            assert not await round_trip(nc, 1)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.5)  # the late PONG arrives
        await nc.publish("x.y", b"after")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"after"
        assert await round_trip(nc, 2)
    finally:
        await nc.close()


async def test_the_client_gives_a_hung_server_up_after_its_pings(private_nats: Server) -> None:
    """``nats.ping_interval_s`` / ``max_outstanding_pings`` reach the client: with a
    hung server it reconnects after the pings go unanswered, within about
    interval x (max + 1), and works again once the server resumes."""
    from jetsource.eventstore.bootstrap import nats_options

    proc = private_nats.proc
    assert proc is not None
    settings = JetsourceSettings(
        nats=NatsSettings(url=private_nats.url, ping_interval_s=0.5, max_outstanding_pings=2)
    )
    options = nats_options(settings)
    assert (options["ping_interval"], options["max_outstanding_pings"]) == (0.5, 2)
    lost = asyncio.Event()

    async def disconnected() -> None:
        lost.set()

    nc = await nats.connect(**{**options, "reconnect_time_wait": 0.2}, disconnected_cb=disconnected)
    try:
        stop_now(proc.pid)
        try:
            started = time.monotonic()
            await asyncio.wait_for(lost.wait(), 10)
            assert time.monotonic() - started < 10
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        async def works() -> bool:
            if not nc.is_connected:
                return False
            await asyncio.wait_for(nc.flush(), 2)
            return True

        await eventually(works, timeout=20)
    finally:
        await nc.close()
