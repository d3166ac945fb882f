"""Query entrypoint and composition root: settings -> stores and read models ->
gRPC server (health, reflection, Prometheus /metrics on its own port)."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field

from grpc_health.v1 import health_pb2

from jetsource._gen.context.v1 import query_pb2
from jetsource.core.aio import honour_cancel, stop_task
from jetsource.core.grpcserver import GrpcEndpoint, start_grpc, stop_on_signals
from jetsource.core.metrics import register_service, start_metrics_server, watch_nats
from jetsource.core.runner import load_settings, run_service
from jetsource.core.settings import env_var
from jetsource.core.workers import serve_workers
from jetsource.domains.context.history import StateLoader
from jetsource.domains.context.query_service import ContextQueryService, add_to_server
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.query.settings import QuerySettings

log = logging.getLogger("jetsource.query")
SERVICE_NAME = query_pb2.DESCRIPTOR.services_by_name["ContextQueryService"].full_name


@dataclass
class Query:
    grpc: GrpcEndpoint
    projection: Projection
    stopped: bool = False
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.grpc.port

    async def stop(self, grace: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.grpc.stop(grace)  # open watches end; in-flight reads finish
        await self.projection.close()


async def build(settings: QuerySettings) -> Query:
    projection = await open_projection(settings, provision=False)
    try:
        await projection.check_access(valkey=True, graph=True)
    except BaseException:
        await projection.close()
        raise
    o = settings.query
    loader = StateLoader(projection.store, projection.snapshots, settings.snapshots.cache_size)
    servicer = ContextQueryService(projection, loader, o)
    servicer.heap.enabled = True
    endpoint = await start_grpc(
        lambda server: add_to_server(servicer, server),
        SERVICE_NAME,
        o.target(),
        o.max_concurrent_rpcs,
        settings.grpc,
        share_port=o.port_shared,
        port_setting=env_var(QuerySettings, "query", "grpc_port"),
    )
    servicer.heap.settle()  # what start-up made lives as long as the process
    return Query(endpoint, projection)


async def follow_stores(query: Query, every_s: float) -> None:
    """Health tells the truth: NOT_SERVING while NATS or Valkey does not answer (the
    current state and time travel need them), SERVING again on its own. The graph store
    serves one RPC (GetDecisionGraph answers UNAVAILABLE while it is away): it is
    logged, not a reason to take every read out of service."""
    serving = True
    while True:
        honour_cancel()  # a probe's library may swallow the cancel that stops this
        down = await query.projection.unreachable({"valkey"})
        if bool(down) == serving:
            serving = not down
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await query.grpc.health.set(name, status)
            if down:
                log.warning("NOT_SERVING: not reachable: %s", ", ".join(down))
            else:
                log.info("SERVING: every store answers again")
        query.unreachable = down
        await asyncio.sleep(every_s)


async def serve(settings: QuerySettings) -> None:
    o = settings.query
    register_service("query")
    query = await build(settings)
    metrics = (
        start_metrics_server(
            o.metrics_port,
            o.grpc_host,
            lambda: query.projection.nc.is_connected and not query.unreachable,
            env_var(QuerySettings, "query", "metrics_port"),
        )
        if o.metrics_port
        else None
    )
    nats_state = watch_nats(query.projection.nc, "query")
    stores = asyncio.create_task(follow_stores(query, o.store_probe_s))
    log.info("query listening on %s:%d", o.grpc_host, query.port)
    await stop_on_signals().wait()
    log.info("query shutting down")
    nats_state.cancel()
    await stop_task(stores)
    if metrics is not None:
        metrics.shutdown()
    await query.stop(o.shutdown_grace_s)


def main() -> None:
    settings = load_settings("query", QuerySettings)
    code = serve_workers("query", "jetsource.query.server", settings, settings.query)
    if code is not None:
        sys.exit(code)
    run_service("query", settings, serve)


if __name__ == "__main__":
    main()
