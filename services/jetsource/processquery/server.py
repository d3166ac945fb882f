"""Process query entrypoint and composition root: settings -> Valkey (the read
models), NATS (only the control bucket: which model version is active; never the
event stream) -> gRPC server (health, reflection, Prometheus /metrics)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from grpc_health.v1 import health_pb2
from nats.aio.client import Client as NATS
from valkey.asyncio import Valkey

from jetsource.core.aio import honour_cancel, stop_task
from jetsource.core.grpcserver import GrpcEndpoint, start_grpc, stop_on_signals
from jetsource.core.heap import keep_in_server
from jetsource.core.metrics import register_service, start_metrics_server, watch_nats
from jetsource.core.runner import load_settings, run_service
from jetsource.core.settings import env_var
from jetsource.eventstore.bootstrap import connect, release
from jetsource.processquery.parked import DeadLetterProbe
from jetsource.processquery.service import SERVICE, ProcessQueryService, add_to_server
from jetsource.processquery.settings import ProcessQuerySettings
from jetsource.projection.control import Control
from jetsource.projection.valkey import check_valkey_access, connect_valkey, valkey_problem

log = logging.getLogger("jetsource.process_query")


@dataclass
class ProcessQuery:
    grpc: GrpcEndpoint
    service: ProcessQueryService
    nc: NATS
    redis: Valkey
    stopped: bool = False
    valkey_down: bool = False

    @property
    def port(self) -> int:
        return self.grpc.port

    async def stop(self, grace: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.service.close()
        await self.grpc.stop(grace)
        await self.redis.aclose()
        await release(self.nc)


async def build(settings: ProcessQuerySettings) -> ProcessQuery:
    nc = await connect(settings)
    redis = connect_valkey(settings)
    try:
        await check_valkey_access(redis, settings)
    except BaseException:
        await redis.aclose()
        await release(nc)
        raise
    o, p = settings.process_query, settings.projector
    # An item past the page's byte budget is never cut: half the message limit leaves
    # room for it. A tree stops before its budget: the limit less a margin.
    limit = settings.grpc.max_message_bytes
    o = o.model_copy(
        update={
            "max_page_bytes": min(o.max_page_bytes, limit // 2),
            "max_tree_bytes": min(o.max_tree_bytes, max(limit - 64 * 1024, limit // 2)),
        }
    )
    control = Control(nc, p.control_bucket, settings.eventstore.replicas)
    probe = DeadLetterProbe(nc, p.dlq_stream, p.dlq_subject_prefix, o.dead_letter_timeout_s)
    service = ProcessQueryService(redis, control, p.valkey_prefix, o, p.control_bucket, probe)
    try:
        endpoint = await start_grpc(
            lambda server: add_to_server(service, server),
            SERVICE,
            o.target(),
            o.max_concurrent_rpcs,
            settings.grpc,
            port_setting=env_var(ProcessQuerySettings, "process_query", "grpc_port"),
        )
    except BaseException:
        await redis.aclose()
        await release(nc)
        raise
    return ProcessQuery(endpoint, service, nc, redis)


async def follow_valkey(query: ProcessQuery, every_s: float) -> None:
    """NOT_SERVING while Valkey (every read model) does not answer or NATS is not
    connected (the control bucket says which version each read model serves: reads are
    UNAVAILABLE without it, and /healthz said 503 while the gRPC health, which the
    chart's readiness asks, stayed SERVING); SERVING again on its own."""
    serving = True
    while True:
        honour_cancel()  # a probe's library may swallow the cancel that stops this
        valkey_why = await valkey_problem(query.redis, every_s)
        valkey_down = valkey_why is not None
        nats_down = not query.nc.is_connected
        down = valkey_down or nats_down
        if down == serving:
            serving = not down
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE):
                await query.grpc.health.set(name, status)
            if down:
                why = [
                    *([valkey_why] if valkey_why else []),
                    *(["nats is not connected"] if nats_down else []),
                ]
                log.warning("NOT_SERVING: %s", ", ".join(why))
            else:
                log.info("SERVING: valkey and nats answer again")
        query.valkey_down = valkey_down
        await asyncio.sleep(every_s)


async def serve(settings: ProcessQuerySettings) -> None:
    o = settings.process_query
    register_service("process-query")
    query = await build(settings)
    # Full collections walked the modules and what lives for nothing: pauses of every
    # read in flight (jetsource.core.heap).
    keeper = keep_in_server(o.freeze_every_s)
    metrics = (
        start_metrics_server(
            o.metrics_port,
            o.grpc_host,
            lambda: query.nc.is_connected and not query.valkey_down,
            env_var(ProcessQuerySettings, "process_query", "metrics_port"),
        )
        if o.metrics_port
        else None
    )
    nats_state = watch_nats(query.nc, "process-query")
    stores = asyncio.create_task(follow_valkey(query, o.store_probe_s))
    log.info("process query listening on %s:%d", o.grpc_host, query.port)
    await stop_on_signals().wait()
    log.info("process query shutting down")
    nats_state.cancel()
    keeper.cancel()
    await stop_task(stores)
    if metrics is not None:
        metrics.shutdown()
    await query.stop(o.shutdown_grace_s)


def main() -> None:
    run_service("process-query", load_settings("process-query", ProcessQuerySettings), serve)


if __name__ == "__main__":
    main()
