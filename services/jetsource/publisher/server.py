"""Publisher entrypoint and composition root: settings -> store -> handler -> gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from prometheus_client import start_http_server

from jetsource._gen.context.v1 import commands_pb2, commands_pb2_grpc
from jetsource.core.grpcserver import GrpcEndpoint, start_grpc, stop_on_signals
from jetsource.core.runner import run_service
from jetsource.domain.context.events import registry
from jetsource.domain.context.history import StateLoader
from jetsource.eventstore.bootstrap import open_event_store, open_snapshot_store, release
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore
from jetsource.publisher.handler import CommandHandler
from jetsource.publisher.service import ContextCommandService
from jetsource.publisher.settings import PublisherSettings

log = logging.getLogger("jetsource.publisher")
SERVICE_NAME = commands_pb2.DESCRIPTOR.services_by_name["ContextCommandService"].full_name


@dataclass
class Publisher:
    grpc: GrpcEndpoint
    nc: NATS
    store: JetStreamEventStore
    snapshots: JetStreamSnapshotStore
    stopped: bool = False

    @property
    def port(self) -> int:
        return self.grpc.port

    async def stop(self, grace: float) -> None:
        if self.stopped:
            return
        self.stopped = True
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
    loader = StateLoader(store, snapshots, settings.snapshots.cache_size)
    handler = CommandHandler(
        store, o.conflict_retries, o.conflict_backoff_s, o.state_cache_size, loader
    )
    endpoint = await start_grpc(
        lambda server: commands_pb2_grpc.add_ContextCommandServiceServicer_to_server(
            ContextCommandService(handler, o.default_deadline_s), server
        ),
        SERVICE_NAME,
        o.target(),
        o.max_concurrent_rpcs,
        settings.grpc,
    )
    return Publisher(endpoint, nc, store, snapshots)


async def serve(settings: PublisherSettings) -> None:
    o = settings.publisher
    if o.metrics_port:
        start_http_server(o.metrics_port, addr=o.grpc_host)
    publisher = await build(settings)
    log.info("publisher listening on %s:%d", o.grpc_host, publisher.port)
    await stop_on_signals().wait()
    log.info("publisher shutting down")
    await publisher.stop(o.shutdown_grace_s)


def main() -> None:
    run_service("publisher", PublisherSettings.load(), serve)


if __name__ == "__main__":
    main()
