"""The runtime host: one worker per live (model, version) of the models it runs,
each model on its own domain's stream, kept in step with the read-model control
entries; /metrics and /healthz over HTTP; SIGTERM finishes the batch in progress,
then stops. The projector and the snapshotter services are this host."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jetsource.core.aio import wait_event, wait_for
from jetsource.core.grpcserver import stop_on_signals
from jetsource.core.heap import keep_in_server
from jetsource.core.metrics import bind_http, register_service, watch_nats
from jetsource.core.settings import env_var
from jetsource.eventstore.refusals import refused_from
from jetsource.projection.bootstrap import IncompleteModelError, Projection, open_projection
from jetsource.projection.partitions import (
    Lease,
    Leases,
    Membership,
    Partition,
    default_member,
    ensure_mirror,
    fence_for,
)
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorOptions, ProjectorSettings

log = logging.getLogger("jetsource.projector")


@dataclass
class ProjectorService:
    projection: Projection
    # (model, version), or (model, version, partition) when partitioned.
    workers: dict[tuple[Any, ...], tuple[Worker, asyncio.Task[None]]] = field(default_factory=dict)
    stopping: bool = False
    # Stores the running models need that did not answer at the last probe: not healthy.
    unreachable: dict[str, str] = field(default_factory=dict)
    # Replicas of one group share the partitions (default: the service's name).
    group: str = "projector"
    membership: Membership | None = None
    # Why the last membership round failed ("" once one succeeds): /healthz says it
    # beside the expired leases (a lease bucket refusing writes on a full store).
    membership_failure: str = ""
    _wanted: set[tuple[str, int]] = field(default_factory=set)

    async def probe(self) -> None:
        kinds = {
            self.projection.spec(m, self.projection.pinned_version(m) or 1).store
            for m in self.models
        }
        down = await self.projection.unreachable(kinds)
        if down != self.unreachable:
            if down:
                log.warning("not reachable: %s", ", ".join(f"{k} ({v})" for k, v in down.items()))
            else:
                log.info("every store answers again")
        self.unreachable = down

    @property
    def options(self) -> ProjectorOptions:
        return self.projection.settings.projector

    @property
    def models(self) -> list[str]:
        """The models named by the settings, else every default model of every
        registered domain."""
        return self.options.models or self.projection.default_models()

    @property
    def partitioned(self) -> bool:
        return self.options.partitions.count > 0

    async def _live_versions(self) -> set[tuple[str, int]]:
        wanted: set[tuple[str, int]] = set()
        for name in self.models:
            pinned = self.projection.pinned_version(name)
            if pinned is not None:  # its version follows a schema, not a cutover
                wanted.add((name, pinned))
                continue
            control = await self.projection.control.ensure(name, 1)
            wanted |= {(name, v) for v in control.live()}
        return wanted

    def _history(self, model: str) -> Any:
        """The model's domain history with the archive below it (a compacted stream
        whose archive is read), else its live store."""
        from jetsource.archive.history import history_store

        return history_store(self.projection.store_for(model), self.projection.settings)

    async def sync(self) -> None:
        """Start a worker for every live version of the configured models; stop the
        ones whose version is gone (dropped after a cutover)."""
        wanted = await self._live_versions()
        if self.partitioned:
            self._wanted = wanted
            await self._sync_partitions()
            return
        for key in wanted - set(self.workers):
            worker = Worker(
                self.projection.nc,
                self.projection.store_for(key[0]),
                self.projection.model(*key),
                self.projection.dead_letters,
                self.options,
                history=self._history(key[0]),
            )
            task = asyncio.create_task(worker.run(), name=f"worker-{key[0]}-v{key[1]}")
            self.workers[key] = (worker, task)
            log.info("started %s v%d", *key)
        for key in set(self.workers) - wanted:
            await self._stop_worker(key)
        for key, (_, task) in list(self.workers.items()):
            if task.done():  # crashed: log and restart on the next sync
                exc = task.exception()
                log.error("worker %s v%d stopped: %r", *key, exc)
                del self.workers[key]

    async def _stop_worker(self, key: tuple[Any, ...]) -> None:
        entry = self.workers.pop(key, None)
        if entry is None:  # stopped already (a lost lease and a sync round both ask)
            return
        worker, task = entry
        worker.stop()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await wait_for(task, self.options.shutdown_grace_s)
        log.info("stopped %s v%d" + (" partition %d" if len(key) > 2 else ""), *key)

    # -- partitioned ------------------------------------------------------------------

    def _units(self) -> int:
        """Leased units: the N partitions, and one more for the models kept whole."""
        o = self.options.partitions
        whole = any(self._whole(m) for m in self.models)
        return o.count + (1 if whole else 0)

    def _whole(self, name: str) -> bool:
        version = self.projection.pinned_version(name) or 1
        return self.projection.spec(name, version).store in self.options.partitions.whole_stores

    def _start_partition(self, lease: Lease) -> None:
        """A worker per live model version for a unit this replica now leases: a
        partition of the split models, or (unit N) the whole stream of the others."""
        assert self.membership is not None
        n = self.options.partitions.count
        for name, version in sorted(self._wanted):
            key = (name, version, lease.partition)
            if key in self.workers or self._whole(name) != (lease.partition == n):
                continue
            store = self.projection.store_for(name)
            fence = fence_for(self.membership.leases, lease)
            part = (
                None
                if lease.partition == n
                else Partition(
                    lease.partition, n, store.settings.stream, store.settings.subject_prefix
                )
            )
            worker = Worker(
                self.projection.nc,
                store,
                self.projection.model(name, version, fence),
                self.projection.dead_letters,
                self.options,
                part,
                fence,
                history=self._history(name),
            )
            task = asyncio.create_task(
                worker.run(), name=f"worker-{name}-v{version}-p{lease.partition}"
            )
            self.workers[key] = (worker, task)
            log.info("started %s v%d partition %d", *key)

    async def _stop_partition(self, partition: int) -> None:
        keys = [k for k in self.workers if len(k) > 2 and k[2] == partition]
        await asyncio.gather(*(self._stop_worker(k) for k in keys))

    async def _sync_partitions(self) -> None:
        if self.membership is None:
            return
        releasing = self.membership.releasing
        held = {p: x for p, x in self.membership.leases.held.items() if p not in releasing}
        for lease in held.values():
            self._start_partition(lease)
        for key, (worker, task) in list(self.workers.items()):
            if (key[0], key[1]) not in self._wanted or key[2] not in held:
                await self._stop_worker(key)
            elif task.done():
                # Fenced (its lease is gone: the membership round lets it go) or
                # crashed: restarted on the next round while the lease is held.
                if not worker.fenced:
                    log.error("worker %s v%d partition %d stopped: %r", *key, task.exception())
                del self.workers[key]

    async def _open_partitions(self) -> None:
        """Mirrors of the streams the models read, the lease bucket, this member."""
        o = self.options.partitions
        s = self.projection.settings
        leases = Leases(
            self.projection.nc,
            o,
            o.group or self.group,
            o.member or default_member(),
            s.eventstore.replicas,
            s.eventstore.request_timeout_s,
        )
        await leases.start()

        async def gained(lease: Lease) -> None:
            self._start_partition(lease)

        self.membership = Membership(
            leases, self._units(), self._stop_partition, gained, self._stop_partition
        )
        await self.membership.join()  # another COUNT in the group: refused, before any mirror
        for name in self.models:
            store = self.projection.store_for(name)
            await store.start()
            await ensure_mirror(
                store._replies,
                store.settings.stream,
                store.settings.subject_prefix,
                o.count,
                s.eventstore.replicas,
                s.eventstore.request_timeout_s,
            )

    async def _membership_loop(self, stop: asyncio.Event) -> None:
        assert self.membership is not None
        every = self.options.partitions.renew_every_s
        while not stop.is_set():
            try:
                await self.membership.tick()
                self.membership_failure = ""
            except Exception as exc:  # NATS briefly away: leases expire, others take over
                bucket = f"KV_{self.options.partitions.lease_bucket}"
                named = refused_from(exc, bucket)
                self.membership_failure = str(named) if named else repr(exc)
                log.warning("membership round failed: %s", self.membership_failure)
            await wait_event(stop, every)

    def healthy(self) -> bool:
        """Asked from the health thread: reads a snapshot of the worker table (one
        C-level copy under the GIL), never awaits the loop."""
        return not self.problems()

    def problems(self) -> list[str]:
        """Why this service is not healthy (empty: healthy), each naming what is wrong;
        asked from the health thread like ``healthy``."""
        workers = list(self.workers.values())
        # A replica of a partitioned group may hold no partition (more replicas than
        # partitions): healthy while it keeps its membership.
        members = self.membership is not None and (
            time.monotonic() - self.membership.last_tick < self.options.partitions.lease_ttl_s
        )
        out: list[str] = []
        if self.stopping:
            out.append("stopping")
        if not self.projection.nc.is_connected:
            out.append("NATS disconnected")
        if not workers and not members:
            out.append("no worker running")
        if self.membership is not None and self.membership.conflict:
            out.append(self.membership.conflict)
        if self.membership is not None and self.membership.last_tick and not members:
            why = f"; {self.membership_failure}" if self.membership_failure else ""
            out.append(
                f"no membership round for {time.monotonic() - self.membership.last_tick:.0f} s"
                f" (lease bucket {self.options.partitions.lease_bucket}): its leases have expired"
                + why
            )
        if any(t.done() for _, t in workers):
            out.append("workers not running")
        # A store that refuses every write (#18's sibling: Valkey OOM at maxmemory,
        # READONLY, the graph store away) leaves the events to redelivery: said within
        # store_outage_after_s, not only by the stall rule two minutes later.
        outages = [o for o in (w.store_outage for w, _ in workers) if o]
        out += outages
        # A model with work delivered and nothing done for stall_after_s is not
        # healthy, even though its task runs (#22: /healthz said 200 through a livelock).
        stalled = [f"{w.spec.name} v{w.spec.version} stalled" for w, _ in workers if w.stalled]
        out += stalled
        # Nor is one whose store does not answer (#18: 200 with Valkey down).
        if self.unreachable:
            out.append(
                "not reachable: " + ", ".join(f"{k} ({v})" for k, v in self.unreachable.items())
            )
        return out

    def liveness_problems(self) -> list[str]:
        """What a restart of this process would cure (empty: alive): a model stalled
        while NATS is connected and its store neither refuses its writes nor is out of
        reach (#22's livelock). A dependency away is not: /healthz takes the replica out
        of service for it, and a restart would only add a cold start to the outage."""
        if self.stopping or not self.projection.nc.is_connected or self.unreachable:
            return []
        return [
            f"{w.spec.name} v{w.spec.version} stalled"
            for w, _ in self.workers.values()
            if w.stalled and not w.refusing
        ]

    async def run(self, stop: asyncio.Event) -> None:
        rounds: asyncio.Task[None] | None = None
        if self.partitioned:
            await self._open_partitions()
            self._wanted = await self._live_versions()
            rounds = asyncio.create_task(self._membership_loop(stop), name="membership")
        while not stop.is_set():
            try:
                await self.sync()
            except IncompleteModelError:
                raise  # a model that lacks methods does not get them by retrying: end
            except Exception as exc:  # NATS briefly away: keep the workers, retry
                log.warning("control sync failed: %r", exc)
            await self.probe()
            await wait_event(stop, self.options.control_poll_s)
        self.stopping = True
        if rounds is not None:
            await asyncio.gather(rounds, return_exceptions=True)
        for worker, _ in self.workers.values():
            worker.stop()
        await asyncio.gather(
            *(wait_for(t, self.options.shutdown_grace_s) for _, t in self.workers.values()),
            return_exceptions=True,
        )
        if self.membership is not None:
            # Batches are finished: hand the partitions over now, not after the TTL.
            await self.membership.leave()
            await self.membership.leases.stop()


# The event loop is asked to tick this often; /healthz says 503 when it has not for
# LOOP_STALL_S (a worker hogging the loop that long is stuck, not catching up).
LOOP_TICK_S = 0.5
LOOP_STALL_S = 30.0


class HealthServer:
    """/metrics (Prometheus text) and /healthz (/readyz) on a thread of their own.

    Catch-up work runs on the event loop; an answer from the loop would wait behind
    it (over a second after a restart under load, enough for `jetsource up` to give
    up on a healthy projector). The thread answers at once from what the loop last
    recorded: the workers' state and a heartbeat the loop writes every
    ``LOOP_TICK_S``. Nothing here awaits the loop."""

    def __init__(
        self, service: ProjectorService, host: str, port: int, setting: str | None = None
    ) -> None:
        self.service = service
        self.heartbeat = time.monotonic()
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    code, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest()
                elif self.path.startswith("/livez"):
                    ok, why = health.alive()
                    code, ctype = (200 if ok else 503), "text/plain"
                    body = b"ok\n" if ok else f"not alive: {why}\n".encode()
                elif self.path.startswith(("/healthz", "/readyz")):
                    ok, why = health.check()
                    code, ctype = (200 if ok else 503), "text/plain"
                    body = b"ok\n" if ok else f"unhealthy: {why}\n".encode()
                else:
                    code, ctype, body = 404, "text/plain", b"not found\n"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None  # probes every second would flood the log

        self.httpd = bind_http("/metrics and /healthz", host, port, Handler, setting)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="projector-http", daemon=True
        )
        self._beat: asyncio.Task[None] | None = None

    def check(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.heartbeat
        if stalled > LOOP_STALL_S:
            return False, f"event loop has not run for {stalled:.0f} s"
        if self.service.healthy():
            return True, ""
        # What is wrong, by name (a model and its store, NATS, a stalled model...).
        problems: list[str] = getattr(self.service, "problems", list)()
        return False, "; ".join(problems) or "workers not running"

    def alive(self) -> tuple[bool, str]:
        """/livez (the liveness probe's): the event loop runs, and no model is stalled
        for a reason of this process's own. NATS or a store away fails /healthz only."""
        stalled = time.monotonic() - self.heartbeat
        if stalled > LOOP_STALL_S:
            return False, f"event loop has not run for {stalled:.0f} s"
        problems: list[str] = getattr(self.service, "liveness_problems", list)()
        return (not problems), "; ".join(problems)

    async def _tick(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(LOOP_TICK_S)

    def start(self) -> HealthServer:
        self._beat = asyncio.create_task(self._tick(), name="projector-heartbeat")
        self._thread.start()
        return self

    def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


def http_server(
    service: ProjectorService, host: str, port: int, setting: str | None = None
) -> HealthServer:
    """Start /metrics, /healthz (200 when every worker runs) and /livez (200 unless a
    restart would cure something) on their own thread; a
    port in use is a ListenError naming ``setting``, the variable that moves it."""
    return HealthServer(service, host, port, setting).start()


PROJECTOR_HTTP_PORT = env_var(ProjectorSettings, "projector", "http_port")


async def serve(
    settings: ProjectorSettings, name: str = "projector", port_setting: str = PROJECTOR_HTTP_PORT
) -> None:
    """Run the models of ``settings.projector``; ``port_setting`` is the variable that
    moves its HTTP port (the snapshotter's options stand in for the projector's)."""
    projection = await open_projection(settings, provision=True)
    o = settings.projector
    service = ProjectorService(projection, group=name)
    try:
        for model in service.models:
            projection.spec(model, 1)  # a misspelt model fails here, by name
        stores = {
            projection.spec(m, projection.pinned_version(m) or 1).store for m in service.models
        }
        await projection.check_access(valkey="valkey" in stores, graph="graph" in stores)
    except BaseException:
        await projection.close()
        raise
    server = http_server(service, o.host, o.http_port, port_setting) if o.http_port else None
    register_service(name)
    nats_state = watch_nats(projection.nc, name)
    stop = stop_on_signals()
    # Full collections walked the state cache and start-up's modules: pauses of 80-170
    # ms every few seconds under load (gc.callbacks), every event in flight held up.
    # Frozen every second, they walk only what changed since (jetsource.core.heap).
    keeper = keep_in_server(o.freeze_every_s)
    log.info("%s running models %s", name, ", ".join(service.models))
    try:
        await service.run(stop)
    finally:
        keeper.cancel()
    nats_state.cancel()
    log.info("%s stopped", name)
    if server is not None:
        server.close()
    await projection.close()
