"""Publisher entrypoint and composition root: settings -> store -> handler -> gRPC server.

Health tells the truth about writing: the gRPC health service says NOT_SERVING while
the publisher cannot store events (NATS unreachable, or JetStream refusing writes: a
full disk or storage limit, JetStream disabled, the stream sealed) and SERVING again on
its own once a probe write and the stream's state say it can.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from nats.aio.client import Client as NATS
from prometheus_client import Gauge

from jetsource._gen.context.v1 import commands_pb2_grpc
from jetsource.archive.history import history_store
from jetsource.core.envelope import AppendResult, Expected, NewEvent
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.core.grpcserver import GrpcEndpoint, start_grpc, stop_on_signals
from jetsource.core.heap import keep_in_server
from jetsource.core.metrics import register_service, start_metrics_server, watch_nats
from jetsource.core.runner import load_settings, run_service
from jetsource.core.settings import env_var
from jetsource.core.workers import serve_workers
from jetsource.core.writehealth import WriteHealth
from jetsource.domains.context.command_service import SERVICE as SERVICE_NAME
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

WRITABLE = Gauge(
    "jetsource_publisher_writable",
    "1 while the publisher can store events; 0 while NATS is away or JetStream refuses",
)


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
    writes = WriteHealth(
        nc,
        settings.eventstore.stream,
        SERVICE_NAME,
        WRITABLE,
        who="publisher",
        replicas=settings.eventstore.replicas,
        name_refusal=refused_from,
    )
    watched = cast(EventStore, WatchedStore(store, writes))
    # Histories are read through the archive on a compacted stream (as the query
    # service reads them): a context folded without a snapshot (none kept, another
    # schema's) and a key repeated after its events were purged, both answered
    # FAILED_PRECONDITION naming the horizon.
    history = cast(EventStore, history_store(store, settings))
    loader = StateLoader(history, snapshots, settings.snapshots.cache_size)
    handler = CommandHandler(
        watched,
        o.conflict_retries,
        o.conflict_backoff_s,
        o.state_cache_size,
        loader,
        max_context_bytes=settings.context_cap(),
        history=history,
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
        port_setting=env_var(PublisherSettings, "publisher", "grpc_port"),
    )
    writes.health = endpoint.health
    writes.start()
    return Publisher(endpoint, nc, store, snapshots, writes)


async def serve(settings: PublisherSettings) -> None:
    o = settings.publisher
    register_service("publisher")
    publisher = await build(settings)
    # The state cache changes with every command: freeze what lives every second, so
    # a full collection walks only what changed since (jetsource.core.heap).
    keeper = keep_in_server(o.freeze_every_s)

    def healthy() -> bool:
        writes = publisher.writes
        return publisher.nc.is_connected and (writes is None or writes.writable)

    metrics = (
        start_metrics_server(
            o.metrics_port,
            o.grpc_host,
            healthy,
            env_var(PublisherSettings, "publisher", "metrics_port"),
        )
        if o.metrics_port
        else None
    )
    nats_state = watch_nats(publisher.nc, "publisher")
    log.info("publisher listening on %s:%d", o.grpc_host, publisher.port)
    await stop_on_signals().wait()
    log.info("publisher shutting down")
    nats_state.cancel()
    keeper.cancel()
    if metrics is not None:
        metrics.shutdown()
    await publisher.stop(o.shutdown_grace_s)


def main() -> None:
    settings = load_settings("publisher", PublisherSettings)
    code = serve_workers("publisher", "jetsource.publisher.server", settings, settings.publisher)
    if code is not None:
        sys.exit(code)
    run_service("publisher", settings, serve)


if __name__ == "__main__":
    main()
