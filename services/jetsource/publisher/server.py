"""Publisher entrypoint and composition root: settings -> store -> handler -> gRPC server.

Health tells the truth about writing: the gRPC health service says NOT_SERVING while
the publisher cannot store events (NATS unreachable, or JetStream refusing writes: a
full disk or storage limit, JetStream disabled, the stream sealed) and SERVING again on
its own once a probe write and the stream's state say it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from grpc_health.v1 import health_pb2
from nats.aio.client import Client as NATS
from prometheus_client import Gauge

from jetsource._gen.context.v1 import commands_pb2, commands_pb2_grpc
from jetsource.core.aio import stop_task, wait_event
from jetsource.core.envelope import AppendResult, Expected, NewEvent
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.core.grpcserver import GrpcEndpoint, start_grpc, stop_on_signals
from jetsource.core.metrics import register_service, start_metrics_server, watch_nats
from jetsource.core.runner import run_service
from jetsource.core.workers import serve_workers
from jetsource.domains.context.command_service import ContextCommandService
from jetsource.domains.context.commands import CommandHandler
from jetsource.domains.context.events import registry
from jetsource.domains.context.history import StateLoader
from jetsource.eventstore.bootstrap import open_event_store, open_snapshot_store, release
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.port import EventStore
from jetsource.eventstore.refusals import JetStreamRefusedError, classify, refused_from
from jetsource.eventstore.snapshots import JetStreamSnapshotStore
from jetsource.publisher.settings import PublisherSettings

log = logging.getLogger("jetsource.publisher")
SERVICE_NAME = commands_pb2.DESCRIPTOR.services_by_name["ContextCommandService"].full_name

PROBE_STREAM = "JETSOURCE_PROBE"
PROBE_EVERY_S = 10.0  # while writable: notice a refusal even when no command comes
PROBE_RETRY_S = 1.0  # while not writable: notice the way back quickly

WRITABLE = Gauge(
    "jetsource_publisher_writable",
    "1 while the publisher can store events; 0 while NATS is away or JetStream refuses",
)


@dataclass
class WriteHealth:
    """Whether the publisher can store events, published as its gRPC health.

    Set by what appends answer (a refusal or no answer: not writable; a stored event:
    writable) and by a probe: a tiny write to ``JETSOURCE_PROBE`` (one message per
    publisher, replaced each time) plus the event stream's state (sealed, at its
    max_bytes) and the account's storage against its limit."""

    nc: NATS
    stream: str
    replicas: int = 1
    health: Any = None  # grpc_health's aio HealthServicer
    writable: bool = True
    reason: str = ""
    probe_subject: str = field(default_factory=lambda: f"jetsource.probe.{time.time_ns()}")
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _probe_ready: bool = False

    async def mark(self, writable: bool, reason: str = "") -> None:
        changed = writable != self.writable
        self.writable, self.reason = writable, reason
        WRITABLE.set(1 if writable else 0)
        if not changed:
            return
        if writable:
            log.info("publisher can store events again: SERVING")
        else:
            log.warning("publisher cannot store events: NOT_SERVING (%s)", reason)
            self._wake.set()
        if self.health is not None:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if writable
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)

    async def probe(self) -> str:
        """Empty when the publisher can write; else what stops it."""
        if not self.nc.is_connected:
            return "NATS is not connected"
        js = self.nc.jetstream()
        try:
            info = await js.stream_info(self.stream)
            if info.config.sealed:
                return f"stream {self.stream} is sealed"
            max_bytes = info.config.max_bytes or -1
            if max_bytes > 0 and info.state.bytes >= max_bytes:
                return f"stream {self.stream} is at its max_bytes ({max_bytes})"
            account = await js.account_info()
            limit = account.limits.max_storage or -1
            used = account.storage + (getattr(account, "reserved_storage", 0) or 0)
            if limit > 0 and used >= limit:
                return f"JetStream account storage limit reached ({used} of {limit} bytes)"
            if not self._probe_ready:
                from nats.js.api import DiscardPolicy, StorageType, StreamConfig

                with contextlib.suppress(Exception):  # exists already: fine
                    await js.add_stream(
                        StreamConfig(
                            name=PROBE_STREAM,
                            subjects=["jetsource.probe.>"],
                            storage=StorageType.FILE,
                            max_msgs_per_subject=1,
                            max_age=3600,
                            discard=DiscardPolicy.OLD,
                            num_replicas=self.replicas,
                        )
                    )
                self._probe_ready = True
            await js.publish(self.probe_subject, b"probe", stream=PROBE_STREAM, timeout=2.0)
        except Exception as exc:
            self._probe_ready = False  # the probe stream may be missing: create it next time
            named = refused_from(exc, PROBE_STREAM)
            if named is not None:
                return str(named)
            return f"NATS JetStream did not accept a probe write: {exc!r}"
        return ""

    async def run(self) -> None:
        while True:
            problem = await self.probe()
            await self.mark(not problem, problem)
            self._wake.clear()
            await wait_event(self._wake, PROBE_EVERY_S if self.writable else PROBE_RETRY_S)

    def start(self) -> None:
        WRITABLE.set(1)
        self._task = asyncio.create_task(self.run(), name="publisher-write-health")

    async def stop(self) -> None:
        await stop_task(self._task)


class WatchedStore:
    """The event store as the handler sees it: appends that JetStream refuses raise a
    named :class:`JetStreamRefusedError` (UNAVAILABLE over gRPC) and turn health to
    NOT_SERVING; an append that is stored turns it back. Everything else passes
    through."""

    def __init__(self, store: JetStreamEventStore, health: WriteHealth) -> None:
        self._store = store
        self._health = health

    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: Expected
    ) -> AppendResult:
        try:
            result = await self._store.append(aggregate_id, events, expected_version)
        except JetStreamRefusedError as exc:
            await self._health.mark(False, str(exc))
            raise
        except EventStoreUnavailableError as exc:
            await self._health.mark(False, str(exc))
            raise
        except Exception as exc:
            code = getattr(exc, "err_code", None)
            if isinstance(code, int) and classify(code) is not None:
                named = refused_from(exc, self._health.stream)
                assert named is not None
                await self._health.mark(False, str(named))
                raise named from exc
            raise
        if not self._health.writable:
            await self._health.mark(True)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass
class Publisher:
    grpc: GrpcEndpoint
    nc: NATS
    store: JetStreamEventStore
    snapshots: JetStreamSnapshotStore
    writes: WriteHealth | None = None
    stopped: bool = False

    @property
    def port(self) -> int:
        return self.grpc.port

    async def stop(self, grace: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.writes is not None:
            await self.writes.stop()
        await self.grpc.stop(grace)  # in-flight commands finish within the grace period
        try:
            await self.store.close()
            await self.snapshots.close()
        finally:
            await release(self.nc)


async def build(settings: PublisherSettings) -> Publisher:
    nc, store = await open_event_store(settings, registry, provision=True)
    o = settings.publisher
    snapshots = await open_snapshot_store(nc, settings, provision=True)
    writes = WriteHealth(nc, settings.eventstore.stream, settings.eventstore.replicas)
    watched = cast(EventStore, WatchedStore(store, writes))
    loader = StateLoader(watched, snapshots, settings.snapshots.cache_size)
    handler = CommandHandler(
        watched, o.conflict_retries, o.conflict_backoff_s, o.state_cache_size, loader
    )
    endpoint = await start_grpc(
        lambda server: commands_pb2_grpc.add_ContextCommandServiceServicer_to_server(
            ContextCommandService(handler, o.default_deadline_s), server
        ),
        SERVICE_NAME,
        o.target(),
        o.max_concurrent_rpcs,
        settings.grpc,
        share_port=o.port_shared,
    )
    writes.health = endpoint.health
    writes.start()
    return Publisher(endpoint, nc, store, snapshots, writes)


async def serve(settings: PublisherSettings) -> None:
    o = settings.publisher
    register_service("publisher")
    publisher = await build(settings)

    def healthy() -> bool:
        writes = publisher.writes
        return publisher.nc.is_connected and (writes is None or writes.writable)

    metrics = start_metrics_server(o.metrics_port, o.grpc_host, healthy) if o.metrics_port else None
    nats_state = watch_nats(publisher.nc, "publisher")
    log.info("publisher listening on %s:%d", o.grpc_host, publisher.port)
    await stop_on_signals().wait()
    log.info("publisher shutting down")
    nats_state.cancel()
    if metrics is not None:
        metrics.shutdown()
    await publisher.stop(o.shutdown_grace_s)


def main() -> None:
    settings = PublisherSettings.load()
    code = serve_workers("publisher", "jetsource.publisher.server", settings, settings.publisher)
    if code is not None:
        sys.exit(code)
    run_service("publisher", settings, serve)


if __name__ == "__main__":
    main()
