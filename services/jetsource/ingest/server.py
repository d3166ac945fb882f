"""jetsource-ingest entrypoint and composition root: settings -> NATS (the OMNI_EVENTS
and OMNI_RAW streams, the handle bucket), Valkey (the read models) -> the HTTP ingress
(uvicorn) and the OmniQueryService (gRPC), in one process, stopped on SIGTERM.

Health: /healthz and /readyz (see :class:`jetsource.ingest.app.Health`) over HTTP, and
OmniQueryService's gRPC health following whether the reads can be answered
(:func:`follow_reads`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from grpc_health.v1 import health_pb2
from nats.aio.client import Client as NATS
from prometheus_client import Gauge

from jetsource.core.aio import honour_cancel, stop_task, wait_for
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError
from jetsource.core.grpcserver import GrpcEndpoint, start_grpc, stop_on_signals
from jetsource.core.heap import keep_in_server
from jetsource.core.metrics import bind_socket, register_service, watch_nats
from jetsource.core.runner import load_settings, run_service
from jetsource.core.settings import env_var
from jetsource.core.writehealth import WriteHealth
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.domains.omni.identity import IdentityService
from jetsource.domains.omni.intake import Intake
from jetsource.domains.omni.query_service import SERVICE_NAME, OmniQueryService, add_to_server
from jetsource.domains.omni.raw import RawArchive
from jetsource.domains.omni.reads import PAGE_MARGIN, OmniReads
from jetsource.eventstore.bootstrap import connect, release
from jetsource.eventstore.horizon import BeyondHorizonError
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.refusals import refused_from
from jetsource.ingest.app import Health, create_app, valkey_answers
from jetsource.ingest.settings import IngestSettings
from jetsource.ingest.transport import guarded_protocol
from jetsource.projection.control import ActiveVersionCache, Control
from jetsource.projection.valkey import check_valkey_access, connect_valkey, valkey_problem

log = logging.getLogger("jetsource.ingest")

# The settings that move its ports, named when one is in use.
HTTP_PORT = env_var(IngestSettings, "ingest", "http_port")
GRPC_PORT = env_var(IngestSettings, "ingest", "grpc_port")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the process's stop event ends it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# Room left in an archive message for its subject and headers (Nats-Msg-Id).
RAW_HEADROOM = 1024

WRITABLE = Gauge(
    "jetsource_ingest_writable",
    "1 while webhooks can be stored (the omni events stream takes writes); 0 while NATS "
    "or JetStream is away or refuses",
)


def raw_record_bytes(settings: IngestSettings, max_payload: int) -> int:
    """The largest archive record the raw stream (its max_msg_size) and the NATS
    server (its max_payload) take; a body whose record is larger is refused 413. Said
    at start when max_body_bytes lets such bodies through."""
    limit = min(settings.omni.raw_max_msg_size, max_payload or 1 << 62) - RAW_HEADROOM
    if settings.ingest.max_body_bytes > limit:
        log.warning(
            "JETSOURCE_INGEST__MAX_BODY_BYTES (%d) is over what the raw archive takes "
            "(%d: JETSOURCE_OMNI__RAW_MAX_MSG_SIZE %d, NATS max_payload %d): larger "
            "bodies are refused 413",
            settings.ingest.max_body_bytes,
            limit,
            settings.omni.raw_max_msg_size,
            max_payload,
        )
    return limit


def page_bytes(max_message_bytes: int) -> int:
    """What a page of events may take within one gRPC answer (its other fields beside)."""
    return max(max_message_bytes - PAGE_MARGIN, max_message_bytes // 2)


@dataclass
class Ingest:
    nc: NATS
    store: JetStreamEventStore
    raw: RawArchive
    identities: IdentityService
    intake: Intake
    reads: OmniReads
    app: Any
    grpc: GrpcEndpoint
    http: _Server | None = None
    http_task: asyncio.Task[None] | None = None
    redis: Any = None
    health: Health | None = None
    head_timeout_s: float = 10.0  # INGEST__HEAD_TIMEOUT_S
    max_head_bytes: int = 64 * 1024  # INGEST__MAX_HEAD_BYTES
    max_connections: int = 0  # INGEST__MAX_CONNECTIONS (0: from the open-file limit)

    @property
    def http_port(self) -> int:
        assert self.http is not None
        servers = getattr(self.http, "servers", [])
        return int(servers[0].sockets[0].getsockname()[1]) if servers else 0

    async def start_http(self, host: str, port: int) -> None:
        """Serve the app on ``host:port``. The socket is bound here: uvicorn, binding
        it, logs a port in use and ends the process with exit 1 (SystemExit from its
        task); here it is a ListenError naming the setting that moves the port."""
        sock = bind_socket("HTTP", host, port, HTTP_PORT)
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            # A deadline on each request's head, the parser's refusals in JSON.
            http=guarded_protocol(self.head_timeout_s, self.max_head_bytes, self.max_connections),
        )
        self.http = _Server(config)
        self.http_task = asyncio.create_task(self.http.serve(sockets=[sock]))
        while not self.http.started:
            if self.http_task.done():
                self.http_task.result()  # raises why it could not start
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self, grace: float) -> None:
        if self.http is not None and self.http_task is not None:
            self.http.should_exit = True
            with contextlib.suppress(Exception):
                await wait_for(self.http_task, grace + 1)
        await self.grpc.stop(grace)
        if self.health is not None and self.health.writes is not None:
            await self.health.writes.stop()
        await self.identities.close()
        await self.raw.close()
        await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()
        await release(self.nc)


async def build(settings: IngestSettings) -> Ingest:
    """Connect and provision (the omni streams and bucket), then serve gRPC; the HTTP
    server starts with :meth:`Ingest.start_http`."""
    nc = await connect(settings)
    try:
        domain = omni_domain(settings.omni)
        store = JetStreamEventStore(nc, domain.registry, domain.eventstore(settings))
        await store.ensure_streams()
        o = settings.ingest
        timeout = settings.eventstore.request_timeout_s
        raw = RawArchive(nc, settings.omni, timeout)
        await raw.ensure_stream()
        identities = IdentityService(nc, store, settings.omni)
        await identities.start()
        intake = Intake(
            o.instances,
            store,
            raw,
            identities,
            o.max_body_bytes,
            o.keep_rejected_bytes,
            raw_record_bytes(settings, nc.max_payload),
        )
        redis = connect_valkey(settings)
        await check_valkey_access(redis, settings)
        control = Control(nc, settings.projector.control_bucket, settings.eventstore.replicas)
        active = ActiveVersionCache(control, o.control_ttl_s, o.control_max_stale_s)
        reads = OmniReads(
            redis,
            settings.projector.valkey_prefix,
            active.active,
            raw,
            store.seq_at_time,
            o.max_page_size,
            history=lambda aggregate_id: applied_history(store, aggregate_id),
            last_version=store.last_version,
            lookup=identities.lookup,
            max_page_bytes=page_bytes(settings.grpc.max_message_bytes),
        )
        writes = WriteHealth(
            nc,
            store.settings.stream,
            SERVICE_NAME,
            WRITABLE,
            who="ingest",
            replicas=settings.eventstore.replicas,
            name_refusal=refused_from,
        )
        health = Health(
            nats=lambda: bool(nc.is_connected),
            valkey=lambda: valkey_answers(redis, min(settings.valkey.socket_timeout_s, 1.0)),
            writes=writes,
        )
        app = create_app(
            intake,
            reads,
            store,
            [t.get_secret_value() for t in o.api_tokens if t.get_secret_value()],
            health,
            body_timeout_s=o.body_timeout_s,
        )
        endpoint = await start_grpc(
            lambda server: add_to_server(OmniQueryService(reads), server),
            SERVICE_NAME,
            f"{o.grpc_host}:{o.grpc_port}",
            o.max_concurrent_rpcs,
            settings.grpc,
            port_setting=GRPC_PORT,
        )
    except BaseException:
        await release(nc)
        raise
    writes.start()
    return Ingest(
        nc,
        store,
        raw,
        identities,
        intake,
        reads,
        app,
        endpoint,
        redis=redis,
        health=health,
        head_timeout_s=o.head_timeout_s,
        max_head_bytes=o.max_head_bytes,
        max_connections=o.max_connections,
    )


async def applied_history(store: JetStreamEventStore, aggregate_id: str) -> list[RecordedEvent]:
    """An aggregate's events as the read models apply them: voided ones left out; none
    when the stream cannot give them as events (an undecodable one, which the models
    dead-letter; a history purged by retention)."""
    try:
        records = await store.read_aggregate(aggregate_id)
    except (CorruptEventError, BeyondHorizonError):
        return []
    return [r for r in records if not store.known_voided(r.stream_seq)]


async def follow_reads(ingest: Ingest, every_s: float) -> None:
    """OmniQueryService's gRPC health (its name and the overall one) NOT_SERVING while
    the reads cannot be answered (NATS or Valkey down), SERVING again on its own, as
    the other query services'; "liveness" stays SERVING (the process answers)."""
    assert ingest.health is not None
    serving = True
    while True:
        honour_cancel()  # a probe's library may swallow the cancel that stops this
        report = await ingest.health.report()
        if report["reads"] != serving:
            serving = report["reads"]
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await ingest.grpc.health.set(name, status)
            down = ["nats is not connected"] if not report["nats"] else []
            if not report["valkey"]:
                # Why (a refused login named as such): it said "not reachable: valkey".
                why = await valkey_problem(ingest.redis, 1.0)
                down.append(why or "valkey does not answer")
            if serving:
                log.info("OmniQueryService SERVING: nats and valkey answer again")
            else:
                log.warning("OmniQueryService NOT_SERVING: %s", ", ".join(down))
        await asyncio.sleep(every_s)


async def serve(settings: IngestSettings) -> None:
    o = settings.ingest
    register_service("ingest")
    ingest = await build(settings)
    await ingest.start_http(o.host, o.http_port)
    # Full collections walked the modules and what lives for nothing: pauses of every
    # webhook in flight (jetsource.core.heap).
    keeper = keep_in_server(o.freeze_every_s)
    nats_state = watch_nats(ingest.nc, "ingest")
    reads_state = asyncio.create_task(follow_reads(ingest, o.store_probe_s))
    log.info(
        "ingest listening: http %s:%d, grpc %s:%d, %d instance(s)",
        o.host,
        ingest.http_port,
        o.grpc_host,
        ingest.grpc.port,
        len(o.instances),
    )
    await stop_on_signals().wait()
    log.info("ingest shutting down")
    nats_state.cancel()
    keeper.cancel()
    await stop_task(reads_state)
    await ingest.stop(o.shutdown_grace_s)


def main() -> None:
    run_service("ingest", load_settings("ingest", IngestSettings), serve)


if __name__ == "__main__":
    main()
