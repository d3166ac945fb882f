"""Endpoint latency: every network endpoint and client of the local stack, 200 sequential
requests each on one kept-alive connection, beside the CPU each request costs.

A request that waits on something fixed (Nagle's algorithm against a delayed ACK, a poll
interval used as a wait, an ``asyncio.sleep`` in a request path, a timeout that always
expires, a connection or a DNS lookup per request) shows as a p50 far above its CPU cost,
often in steps of ~40 ms (delayed ACK), 100 ms or 200 ms, or a poll interval. The note
column flags a row whose p50 is more than 5 ms above its CPU per request (a burst row:
100 ms, since two cores share its CPU; a CLI row, a new process each: 400 ms).

Besides the sequential rows: 32 new connections at once to the HTTP ports (a listen
backlog too short drops SYNs, retried 1 s later), and the CLI from its start to its
answer.

    python -m bench.bench_endpoints            # starts its own stack (`jetsource up`)
    python -m bench.bench_endpoints --quick    # 20 requests a row: does it still run
    python -m bench.bench_endpoints --attach   # the stack of this environment's settings
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import nats
import neo4j
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from valkey.asyncio import Valkey

from bench.common import CpuMeter, Stats, Table, exit_on_signals, ms, scratch_dir, show
from jetsource._gen.omni.v1 import query_pb2 as oq
from jetsource._gen.omni.v1 import query_pb2_grpc as oq_grpc
from jetsource._gen.process.v1 import events_pb2 as pe
from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource._gen.process.v1 import observer_pb2_grpc as ob_grpc
from jetsource._gen.process.v1 import query_pb2 as pq
from jetsource._gen.process.v1 import query_pb2_grpc as pq_grpc
from jetsource.client import ContextClient, QueryClient
from jetsource.devstack.servers import free_port, read_state
from jetsource.domains.omni.signatures import sign

INSTANCE = "latency-cloud"
SECRET = "latency-app-secret"
SLACK_MS = 5.0
BURST = 32
# A new process per call: its wall time above its CPU is mostly waiting for a core (and
# the disk) on a busy machine; a fixed wait shows as a step far above this.
CLI_SLACK_MS = 400.0  # p50 above CPU per request by more than this: a suspect
PORTS = [
    "DEVSTACK__NATS_PORT",
    "DEVSTACK__NATS_MONITOR_PORT",
    "DEVSTACK__VALKEY_PORT",
    "DEVSTACK__GRAPH_HTTP_PORT",
    "DEVSTACK__GRAPH_BOLT_PORT",
    "PUBLISHER__GRPC_PORT",
    "PUBLISHER__METRICS_PORT",
    "PROJECTOR__HTTP_PORT",
    "SNAPSHOTTER__HTTP_PORT",
    "QUERY__GRPC_PORT",
    "QUERY__METRICS_PORT",
    "OBSERVER__GRPC_PORT",
    "OBSERVER__METRICS_PORT",
    "PROCESS_QUERY__GRPC_PORT",
    "PROCESS_QUERY__METRICS_PORT",
    "INGEST__HTTP_PORT",
    "INGEST__GRPC_PORT",
]


def stack_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env["JETSOURCE_DEVSTACK__HOME"] = str(home)
    # The bench's own numbers, not fsync's: the stack's sync policy is not what is measured.
    env["JETSOURCE_DEVSTACK__NATS_SYNC_INTERVAL"] = "default"
    for name in PORTS:
        env[f"JETSOURCE_{name}"] = str(free_port())
    env["JETSOURCE_INGEST__INSTANCES"] = json.dumps(
        {INSTANCE: {"provider": "whatsapp", "format": "cloud", "app_secret": SECRET}}
    )
    return env


def jetsource(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "jetsource", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"jetsource {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


class Stack:
    """Addresses and pids of a running local stack, read from its settings and state."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.home = Path(env.get("JETSOURCE_DEVSTACK__HOME", ".jetsource"))
        self.pids: dict[str, int] = {}
        servers = read_state(self.home / "infra.json").get("servers") or {}
        services = read_state(self.home / "services.json")
        for name, entry in {**servers, **services}.items():
            if isinstance(entry, dict) and entry.get("pid"):
                self.pids[name] = int(entry["pid"])

    def port(self, name: str, default: int) -> int:
        return int(self.env.get(f"JETSOURCE_{name}", default))

    def grpc(self, name: str, default: int) -> str:
        return f"127.0.0.1:{self.port(name, default)}"


class Connection:
    """One kept-alive HTTP/1.1 connection (the least client CPU: the request is one
    write, the answer read by content-length)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.reconnects += 1
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n"
            f"{head}\r\n".encode()
            + body
        )
        status_line = (await self.reader.readline()).split()
        if not status_line:
            raise ConnectionError(f"127.0.0.1:{self.port} closed the connection unanswered")
        status = int(status_line[1])
        length, close = -1, status_line[0] == b"HTTP/1.0"
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            if name.lower() == "connection":
                close = value.strip().lower() != "keep-alive"
        if length >= 0:
            await self.reader.readexactly(length)
        else:
            await self.reader.read()
            close = True
        if close:  # an HTTP/1.0 server: the next request opens a new connection
            self.writer.close()
            self.writer = None
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Bench:
    def __init__(self, stack: Stack, n: int, only: str = "") -> None:
        self.stack, self.n, self.only = stack, n, only.lower()
        self.table = Table(
            f"Endpoint latency: {n} sequential requests each, one connection",
            ["endpoint", "p50", "p99", "note"],
        )

    async def row(
        self,
        name: str,
        call: Callable[[], Awaitable[Any]],
        servers: tuple[str, ...] = (),
        n: int | None = None,
        note: str = "",
        slack_ms: float = SLACK_MS,
    ) -> Stats | None:
        n = n or self.n
        if self.only and self.only not in name.lower():
            return None
        try:
            for _ in range(3):  # connect, warm caches
                await call()
            meter = CpuMeter({s: self.stack.pids[s] for s in servers if s in self.stack.pids})
            meter.start()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            spawned_before = before.ru_utime + before.ru_stime
            latencies = []
            t0 = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                await call()
                latencies.append(time.perf_counter() - t)
            stats = Stats(name, latencies, time.perf_counter() - t0)
            stats.cpu = meter.stop(n)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            spawned = children.ru_utime + children.ru_stime - spawned_before
            if spawned > 0:  # the CLI rows: the processes they started
                stats.cpu.seconds["cli processes"] = spawned
        except Exception as exc:  # one broken endpoint must not hide the others
            why = " ".join(f"failed: {type(exc).__name__}: {exc}".split())[:200]
            self.table.row([name, "n/a", "n/a", why])
            print(f"{name}: {why}", file=sys.stderr)
            return None
        cpu_ms = stats.cpu.total / n * 1000
        parts = [f"CPU {cpu_ms:.2f} ms/req ({', '.join(stats.cpu.seconds)})"]
        if stats.p50 - cpu_ms > slack_ms:
            parts.insert(0, f"**suspect: p50 {stats.p50 - cpu_ms:.0f} ms above CPU**")
        if note:
            parts.append(note)
        self.table.row([name, ms(stats.p50), ms(stats.p99), "; ".join(parts)])
        print(stats.line(), file=sys.stderr)
        return stats


def health(channel: grpc.aio.Channel) -> Callable[[], Awaitable[Any]]:
    stub = health_pb2_grpc.HealthStub(channel)
    return lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=10)


def webhook(i: int) -> bytes:
    """bench_omni's text message, its wamid unique to this run (a stack attached to may
    hold earlier runs' webhooks)."""
    from bench.bench_omni import webhook as text_message

    return text_message(i, 1, tag=f"LATENCY{uuid.uuid4().hex}")


def canonical(process_id: str, event_type: str = "tool_called") -> pe.CanonicalEvent:
    data = struct_pb2.Struct()
    data.update({"tool": "search", "ok": True})
    e = pe.CanonicalEvent(
        event_id=uuid.uuid4().hex,
        process_id=process_id,
        event_type=event_type,
        source="latency",
        data=data,
    )
    e.occurred_at.FromNanoseconds(time.time_ns())
    return e


async def grpc_rows(b: Bench) -> None:
    s = b.stack
    publisher = s.grpc("PUBLISHER__GRPC_PORT", 50051)
    query = s.grpc("QUERY__GRPC_PORT", 50052)
    observer = s.grpc("OBSERVER__GRPC_PORT", 50053)
    pquery = s.grpc("PROCESS_QUERY__GRPC_PORT", 50055)
    omni = s.grpc("INGEST__GRPC_PORT", 50054)

    story = f"latency-{uuid.uuid4().hex[:12]}"
    async with ContextClient(publisher) as c, QueryClient(query) as q:
        await b.row("publisher: grpc.health Check", health(c._channel), ("publisher",))
        version = (await c.create_context(story, "latency")).version
        counter = 0

        async def add() -> None:
            nonlocal counter, version
            counter += 1
            version = (await c.add_decision(story, f"d{counter}", f"decision {counter}")).version

        await b.row("publisher: AddDecision (append)", add, ("publisher", "nats"), note="one story")

        async def create() -> None:
            await c.create_context(f"latency-{uuid.uuid4().hex[:12]}", "latency")

        await b.row("publisher: CreateContext (a new story)", create, ("publisher", "nats"))
        await b.row("query: grpc.health Check", health(q._channel), ("query",))
        await b.row(
            "query: GetContext",
            lambda: q.get_context(story, min_version=version),
            ("query", "valkey"),
        )
        await b.row("query: GetContextAtVersion(1)", lambda: q.at_version(story, 1), ("query",))
        await b.row(
            "query: GetContextAtTime(now)",
            lambda: q.at_time(story, time.time_ns()),
            ("query", "nats"),
        )
        await b.row(
            "query: ListEvents(limit 10)", lambda: q.list_events(story, limit=10), ("query",)
        )
        await b.row(
            "query: ListContexts(page 10)", lambda: q.list_contexts(page_size=10), ("query",)
        )
        await b.row(
            "query: GetDecisionGraph(depth 1)",
            lambda: q.graph(story, depth=1),
            ("query", "graph"),
        )

        async def read_your_write() -> None:
            await add()
            await q.get_context(story, min_version=version)

        await b.row(
            "publisher+projector+query: AddDecision, then GetContext(min_version)",
            read_your_write,
            ("publisher", "projector", "query", "nats", "valkey", "graph"),
            note="includes the projector's delivery",
        )

        async def projected() -> None:
            await add()
            while (await q.get_context(story)).context.version < version:
                pass

        await b.row(
            "projector delivery: AddDecision, then GetContext until seen (busy loop)",
            projected,
            ("publisher", "projector", "query", "nats", "valkey", "graph"),
            note="the read-your-write row's floor: no wait but the projector's",
        )

        async def first_of_watch() -> None:
            call = q.watch(story, from_version=1)
            await call.read()
            call.cancel()

        await b.row(
            "query: WatchContext from version 1, open to its first event",
            first_of_watch,
            ("query", "nats"),
            note=f"a story of {b.n} events or more",
        )

        watch = q.watch(story, from_version=version + 1)

        async def watched() -> None:
            await add()
            while (await watch.read()).state.version < version:
                pass

        await b.row(
            "query: WatchContext delivery after AddDecision",
            watched,
            ("publisher", "query", "nats"),
        )
        watch.cancel()

    async with grpc.aio.insecure_channel(observer) as ch:
        stub = ob_grpc.ObserverServiceStub(ch)
        root = str(uuid.uuid4())
        await b.row("observer: grpc.health Check", health(ch), ("observer",))
        await b.row(
            "observer: Record",
            lambda: stub.Record(ob.RecordRequest(event=canonical(root)), timeout=10),
            ("observer", "nats"),
        )
        await b.row(
            "observer: RecordBatch(1)",
            lambda: stub.RecordBatch(ob.RecordBatchRequest(events=[canonical(root)]), timeout=10),
            ("observer", "nats"),
        )
        await b.row(
            "observer: RecordBatch(2)",
            lambda: stub.RecordBatch(
                ob.RecordBatchRequest(events=[canonical(root) for _ in range(2)]), timeout=10
            ),
            ("observer", "nats"),
        )
        await b.row(
            "observer: RecordBatch(5)",
            lambda: stub.RecordBatch(
                ob.RecordBatchRequest(events=[canonical(root) for _ in range(5)]), timeout=10
            ),
            ("observer", "nats"),
        )

    async with grpc.aio.insecure_channel(pquery) as ch, grpc.aio.insecure_channel(observer) as o:
        stub2 = pq_grpc.ProcessQueryServiceStub(ch)
        recorder = ob_grpc.ObserverServiceStub(o)
        watched_pid = str(uuid.uuid4())
        await recorder.Record(ob.RecordRequest(event=canonical(watched_pid)), timeout=10)
        for _ in range(200):  # until the projector has it: a watch of an unknown one is refused
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub2.GetProcess(pq.GetProcessRequest(process_id=watched_pid), timeout=10)
                break
            await asyncio.sleep(0.05)
        process_watch = stub2.WatchProcess(pq.WatchProcessRequest(process_id=watched_pid))
        await process_watch.read()

        async def process_delivered() -> None:
            await recorder.Record(ob.RecordRequest(event=canonical(watched_pid)), timeout=10)
            await process_watch.read()

        await b.row(
            "process query: WatchProcess delivery after Record",
            process_delivered,
            ("observer", "projector", "process-query", "nats", "valkey"),
            note="includes the projector's delivery",
        )
        process_watch.cancel()

        async def first_of_process_watch() -> None:
            call = stub2.WatchProcess(pq.WatchProcessRequest(process_id=watched_pid))
            await call.read()
            call.cancel()

        await b.row(
            "process query: WatchProcess, open to its first event",
            first_of_process_watch,
            ("process-query", "valkey"),
        )
        await b.row(
            "process query: GetProcessTimeline",
            lambda: stub2.GetProcessTimeline(
                pq.GetProcessTimelineRequest(process_id=watched_pid), timeout=10
            ),
            ("process-query", "valkey"),
        )
        await b.row("process query: grpc.health Check", health(ch), ("process-query",))
        await b.row(
            "process query: ListProcesses(page 10)",
            lambda: stub2.ListProcesses(pq.ListProcessesRequest(page_size=10), timeout=10),
            ("process-query", "valkey"),
        )
        await b.row(
            "process query: GetProcessTree",
            lambda: stub2.GetProcessTree(
                pq.GetProcessTreeRequest(process_id=watched_pid), timeout=10
            ),
            ("process-query", "valkey"),
        )

    async with grpc.aio.insecure_channel(omni) as ch:
        stub3 = oq_grpc.OmniQueryServiceStub(ch)
        await b.row("omni query (ingest): grpc.health Check", health(ch), ("ingest",))
        await b.row(
            "omni query (ingest): ListRecentEvents(10)",
            lambda: stub3.ListRecentEvents(oq.ListRecentEventsRequest(page_size=10), timeout=10),
            ("ingest", "valkey"),
        )
        recent = await stub3.ListRecentEvents(oq.ListRecentEventsRequest(page_size=1), timeout=10)
        if recent.events:
            event_id = recent.events[0].event.id
            await b.row(
                "omni query (ingest): GetEvent",
                lambda: stub3.GetEvent(oq.GetEventRequest(event_id=event_id), timeout=10),
                ("ingest", "valkey"),
            )


async def http_rows(b: Bench) -> None:
    s = b.stack
    ingest = s.port("INGEST__HTTP_PORT", 8088)
    targets = [
        ("projector /healthz", s.port("PROJECTOR__HTTP_PORT", 9101), "/healthz", "projector"),
        ("projector /metrics", s.port("PROJECTOR__HTTP_PORT", 9101), "/metrics", "projector"),
        ("snapshotter /healthz", s.port("SNAPSHOTTER__HTTP_PORT", 9102), "/healthz", "snapshotter"),
        ("query /metrics", s.port("QUERY__METRICS_PORT", 9103), "/metrics", "query"),
        ("ingest /healthz", ingest, "/healthz", "ingest"),
        # page_size: "limit" is no parameter of the read (it was ignored, a page of 50;
        # it is a 400 naming it now).
        ("ingest /api/v1/events?page_size=10", ingest, "/api/v1/events?page_size=10", "ingest"),
    ]
    for name, port, path, server in targets:
        conn = Connection(port)

        async def get(c: Connection = conn, p: str = path) -> int:
            return await c.request("GET", p)

        stats = await b.row(f"HTTP {name}", get, (server,))
        if stats is not None and conn.reconnects > 1:
            b.table.rows[-1][0][3] += f"; a new connection per request ({conn.reconnects})"
        conn.close()

    # A burst of new connections (a scrape, the probes and a balancer's checks at
    # once): what a listen backlog too short costs (dropped SYNs, retried after 1 s).
    for name, port, path, server in targets[:1] + targets[3:5]:

        async def burst(port: int = port, path: str = path) -> None:
            async def one() -> None:
                c = Connection(port)
                try:
                    await c.request("GET", path, headers={"connection": "close"})
                finally:
                    c.close()

            await asyncio.gather(*(one() for _ in range(BURST)))

        await b.row(
            f"HTTP {name}: {BURST} new connections at once",
            burst,
            (server,),
            n=max(5, b.n // 20),
            note="p50/p99 of the whole burst",
            slack_ms=100.0,  # two cores share the burst's CPU; a dropped SYN costs 1 s
        )

    conn = Connection(ingest)
    counter = 0

    async def post() -> None:
        nonlocal counter
        counter += 1
        body = webhook(counter)
        status = await conn.request(
            "POST",
            f"/webhooks/whatsapp/{INSTANCE}",
            body,
            {"x-hub-signature-256": sign(SECRET, body), "content-type": "application/json"},
        )
        if status != 200:
            raise RuntimeError(f"webhook answered {status}")

    await b.row("HTTP ingest webhook POST (whatsapp)", post, ("ingest", "nats"))
    conn.close()

    conn = Connection(ingest)
    async with grpc.aio.insecure_channel(s.grpc("INGEST__GRPC_PORT", 50054)) as ch:
        recent = await oq_grpc.OmniQueryServiceStub(ch).ListRecentEvents(
            oq.ListRecentEventsRequest(page_size=1), timeout=10
        )
    if recent.events:
        event_id = recent.events[0].event.id
        await b.row(
            "HTTP ingest /api/v1/events/{id}",
            lambda: conn.request("GET", f"/api/v1/events/{event_id}"),
            ("ingest", "valkey"),
        )
        attempt = 0

        async def status() -> None:
            nonlocal attempt
            attempt += 1
            body = json.dumps(
                {"state": "processing", "worker": "latency", "attempt": attempt}
            ).encode()
            code = await conn.request(
                "POST",
                f"/api/v1/events/{event_id}/status",
                body,
                {"content-type": "application/json"},
            )
            if code != 200:
                raise RuntimeError(f"status update answered {code}")

        await b.row("HTTP ingest POST /api/v1/events/{id}/status", status, ("ingest", "nats"))
    conn.close()


async def client_rows(b: Bench) -> None:
    s = b.stack
    nc = await nats.connect(f"nats://127.0.0.1:{s.port('DEVSTACK__NATS_PORT', 4222)}")
    try:
        await b.row(
            "NATS client: $JS.API.INFO request",
            lambda: nc.request("$JS.API.INFO", b"", timeout=5),
            ("nats",),
        )
        js = nc.jetstream()
        await b.row(
            "NATS client: JetStream stream info",
            lambda: js.stream_info("CONTEXT_EVENTS"),
            ("nats",),
        )
    finally:
        await nc.close()

    r = Valkey(host="127.0.0.1", port=s.port("DEVSTACK__VALKEY_PORT", 6379))
    try:
        await b.row("Valkey client: PING", r.ping, ("valkey",))
    finally:
        await r.aclose()

    password = s.env.get("JETSOURCE_DEVSTACK__GRAPH_PASSWORD", "jetsource-dev")
    driver = neo4j.AsyncGraphDatabase.driver(
        f"bolt://127.0.0.1:{s.port('DEVSTACK__GRAPH_BOLT_PORT', 7687)}",
        auth=("root", password),
    )

    async def cypher() -> None:
        async with driver.session(database="jetsource") as session:
            result = await session.run("RETURN 1 AS one")
            await result.consume()

    try:
        await b.row("graph client (neo4j driver, Bolt): RETURN 1", cypher, ("graph",))
    finally:
        await driver.close()


async def cli_rows(b: Bench, env: dict[str, str]) -> None:
    """The CLI's time to its first answer: a new process per call, so fewer calls."""
    runs = max(3, b.n // 20)

    def command(*args: str) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "jetsource",
                *args,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()

        return call

    await b.row(
        "CLI: jetsource ctx list (new process, gRPC)",
        command("ctx", "list"),
        n=runs,
        note="a new process: its start-up is its CPU; more is waiting for a core",
        slack_ms=CLI_SLACK_MS,
    )
    await b.row(
        "CLI: jetsource sessions list (new process, NATS)",
        command("sessions", "list"),
        n=runs,
        note="a new process: its start-up is its CPU; more is waiting for a core",
        slack_ms=CLI_SLACK_MS,
    )


async def measure(stack: Stack, n: int, with_cli: bool, only: str = "") -> Table:
    b = Bench(stack, n, only)
    await grpc_rows(b)
    await http_rows(b)
    await client_rows(b)
    if with_cli:
        await cli_rows(b, stack.env)
    b.table.note(
        "p50/p99 of one request (a call waited for before the next); CPU is the client's "
        "and the named servers' CPU seconds over the row, per request. A p50 more than "
        f"{SLACK_MS:.0f} ms above the CPU is marked a suspect: something waited."
    )
    return b.table


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 requests a row")
    parser.add_argument("--attach", action="store_true", help="measure the running stack")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI rows")
    parser.add_argument("--only", default="", help="only the rows whose name has this")
    args = parser.parse_args(argv)
    n = 20 if args.quick else args.requests
    if args.attach:
        env = dict(os.environ)
        return show([asyncio.run(measure(Stack(env), n, not args.no_cli, args.only))])
    home = scratch_dir("jetsource-bench-latency-")
    env = stack_env(home)
    try:
        jetsource(env, "up")
        return show([asyncio.run(measure(Stack(env), n, not args.no_cli, args.only))])
    finally:
        with contextlib.suppress(Exception):
            jetsource(env, "down", timeout=120)


QUICK = ["--quick"]

if __name__ == "__main__":
    main()
