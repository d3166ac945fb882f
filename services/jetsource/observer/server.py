"""Observer entrypoint and composition root: settings -> store + claims -> recorder ->
gRPC ``ObserverService`` (write-only: Record, RecordBatch, RecordStream).

Health tells the truth about writing (:class:`jetsource.core.writehealth.WriteHealth`,
as the publisher's): NOT_SERVING while NATS is not connected, JetStream refuses writes
or an append failed for want of the event store; SERVING again on its own once a probe
write and the stream's state say it can, with no append needed (a NOT_SERVING replica
is out of its Kubernetes Service and gets none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge, Histogram

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.core.aio import stop_task, wait_for
from jetsource.core.clock import NS
from jetsource.core.envelope import NewEvent
from jetsource.core.errors import (
    ConcurrencyError,
    EventStoreUnavailableError,
    StreamMissingError,
    ValidationError,
)
from jetsource.core.grpcserver import GrpcEndpoint, answer_within, start_grpc, stop_on_signals
from jetsource.core.heap import keep_in_server
from jetsource.core.metrics import register_service, start_metrics_server, watch_nats
from jetsource.core.runner import load_settings, run_service
from jetsource.core.settings import env_var
from jetsource.core.writehealth import WriteHealth
from jetsource.domains.process.claims import KvClaims
from jetsource.domains.process.descriptor import DOMAIN
from jetsource.domains.process.recorder import Recorded, Recorder, RecorderOptions
from jetsource.domains.process.validation import Limits
from jetsource.eventstore.bootstrap import connect, release
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.refusals import refused_from
from jetsource.observer.settings import ObserverSettings

log = logging.getLogger("jetsource.observer")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ObserverService"].full_name

EVENTS = Counter(
    "jetsource_observer_events_total",
    "Events by outcome: recorded, duplicate (positions of the original), refused (bad "
    "input), unavailable (the event store away or refusing writes), conflict (the "
    "conflict retries ran out), cancelled (the client went away), error (anything else)",
    ["outcome"],
)
LATENCY = Histogram(
    "jetsource_observer_call_seconds",
    "Observer call latency by method, failed calls included",
    ["method"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
WRITABLE = Gauge(
    "jetsource_observer_writable",
    "1 while the observer can record events; 0 while NATS or JetStream is away",
)


def position(r: Recorded) -> epb.Position:
    p = epb.Position(
        event_id=r.event_id,
        process_id=r.process_id,
        global_seq=r.global_seq,
        process_seq=r.process_seq,
        duplicate=r.duplicate,
    )
    # Set in place: a Timestamp made apart is copied in (one of each per event answered).
    at = p.recorded_at
    at.seconds, at.nanos = divmod(r.recorded_ns, NS)
    return p


def count(recorded: Sequence[Recorded]) -> None:
    """Count events stored (``recorded``) or answered as stored before (``duplicate``)."""
    dup = sum(1 for r in recorded if r.duplicate)
    EVENTS.labels("duplicate").inc(dup)
    EVENTS.labels("recorded").inc(len(recorded) - dup)


def failure_outcome(exc: BaseException) -> str:
    """The ``outcome`` label of events a call failed to record."""
    if isinstance(exc, ValidationError):
        return "refused"
    if isinstance(exc, (EventStoreUnavailableError, StreamMissingError, TimeoutError)):
        return "unavailable"  # TimeoutError: not stored within the caller's deadline
    if isinstance(exc, ConcurrencyError):
        return "conflict"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


class ObserverService(pb_grpc.ObserverServiceServicer):
    """Write-only by contract: the service has no read RPC at all."""

    def __init__(self, recorder: Recorder, health: WriteHealth, stream_flush_events: int) -> None:
        self._recorder = recorder
        self._health = health
        self._flush_events = stream_flush_events

    async def _record(
        self,
        method: str,
        events: Sequence[epb.CanonicalEvent],
        at: str,
        checked: Sequence[NewEvent] | None = None,
        context: grpc.aio.ServicerContext | None = None,
    ) -> list[epb.Position]:
        started = time.perf_counter()
        # Bounded by the caller's deadline, as the publisher's commands: past it, grpc
        # cancelled the call and the events were counted "cancelled" (the client went
        # away), so a NATS outage met by callers with deadlines under the store's
        # request timeout (5 s) showed as no error at all.
        budget = answer_within(context.time_remaining() if context is not None else None)
        # What a failing call stored all the same (the other processes' events of a
        # batch one process's append failed in): counted recorded, not failed.
        settled: list[Recorded] = []
        try:
            try:
                async with asyncio.timeout(budget):
                    recorded = await self._recorder.record(events, at, checked, settled)
            except BaseException as exc:
                count(settled)
                EVENTS.labels(failure_outcome(exc)).inc(len(events) - len(settled))
                if isinstance(exc, (EventStoreUnavailableError, StreamMissingError)):
                    await self._health.mark(False, str(exc))
                raise
            if not self._health.writable:
                await self._health.mark(True)
            count(recorded)
            return [position(r) for r in recorded]
        finally:
            LATENCY.labels(method).observe(time.perf_counter() - started)

    async def Record(
        self, request: pb.RecordRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordResponse:
        if not request.HasField("event"):
            raise ValidationError("event is required", "event")
        [p] = await self._record("Record", [request.event], "event", context=context)
        return pb.RecordResponse(position=p)

    async def RecordBatch(
        self, request: pb.RecordBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordBatchResponse:
        positions = await self._record("RecordBatch", request.events, "events", context=context)
        return pb.RecordBatchResponse(positions=positions)

    async def RecordStream(
        self,
        request_iterator: AsyncIterator[pb.RecordStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.RecordStreamResponse:
        """Records what has arrived whenever the previous flush is done (at most
        ``stream_flush_events`` at once): events are recorded as they come, in arrival
        order per process. Each event is checked as it arrives: a refused one ends the
        stream with INVALID_ARGUMENT naming ``events[i]`` (its arrival index), once
        every event before it is recorded (send the rest again, the same ids:
        duplicates, nothing doubled); nothing after it is read."""
        queue: asyncio.Queue[tuple[epb.CanonicalEvent, NewEvent] | None] = asyncio.Queue()
        refused: list[ValidationError] = []

        async def read() -> None:
            # The end mark goes in however reading ends (a refused event, a message
            # that is not protobuf, the client gone): without it the loop below would
            # wait for good, and the reader's error would reach no one.
            try:
                i = 0
                async for req in request_iterator:
                    try:
                        checked = self._recorder.check(req.event, f"events[{i}]")
                    except ValidationError as exc:
                        EVENTS.labels("refused").inc()
                        refused.append(exc)
                        return
                    await queue.put((req.event, checked))
                    i += 1
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        out: list[epb.Position] = []
        # What one flush may carry: it is one request to the recorder.
        most = min(self._flush_events, self._recorder.most_per_request)
        try:
            ended = False
            while not ended:
                first = await queue.get()
                if first is None:
                    break
                batch = [first]
                while not queue.empty() and len(batch) < most:
                    nxt = queue.get_nowait()
                    if nxt is None:
                        ended = True
                        break
                    batch.append(nxt)
                events = [e for e, _ in batch]
                checked = [n for _, n in batch]
                out += await self._record("RecordStream", events, "events", checked, context)
            if not reader.done():
                await reader
            else:
                reader.result()
            if refused:
                raise refused[0]
        finally:
            await stop_task(reader)  # re-cancelled while it runs, within a bound
        return pb.RecordStreamResponse(positions=out)


@dataclass
class Observer:
    grpc: GrpcEndpoint
    nc: NATS
    store: JetStreamEventStore
    recorder: Recorder
    health: WriteHealth
    stopped: bool = False

    @property
    def port(self) -> int:
        return self.grpc.port

    async def stop(self, grace: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.health.stop()
        await self.grpc.stop(grace)
        try:
            with contextlib.suppress(Exception):
                await wait_for(self.recorder.flush(), grace or 1.0)
            await self.store.close()
        finally:
            await release(self.nc)


def recorder_options(settings: ObserverSettings) -> RecorderOptions:
    o = settings.observer
    return RecorderOptions(
        limits=Limits(max_payload_bytes=o.max_payload_bytes, max_attributes=o.max_attributes),
        max_batch_events=o.max_batch_events,
        claim_lease_s=o.claim_lease_s,
        conflict_retries=o.conflict_retries,
    )


async def build(settings: ObserverSettings) -> Observer:
    o = settings.observer
    nc = await connect(settings)
    cfg = DOMAIN.eventstore(settings)
    store = JetStreamEventStore(nc, DOMAIN.registry, cfg)
    await store.ensure_streams()
    claims = KvClaims(nc, o.claims_bucket, cfg.replicas)
    await claims.kv()
    recorder = Recorder(store, claims, recorder_options(settings))
    health = WriteHealth(
        nc,
        cfg.stream,
        SERVICE_NAME,
        WRITABLE,
        who="observer",
        replicas=cfg.replicas,
        name_refusal=refused_from,
    )
    endpoint = await start_grpc(
        lambda server: pb_grpc.add_ObserverServiceServicer_to_server(
            ObserverService(recorder, health, o.stream_flush_events), server
        ),
        SERVICE_NAME,
        o.target(),
        o.max_concurrent_rpcs,
        settings.grpc,
        port_setting=env_var(ObserverSettings, "observer", "grpc_port"),
    )
    health.health = endpoint.health
    health.start()
    return Observer(endpoint, nc, store, recorder, health)


async def serve(settings: ObserverSettings) -> None:
    o = settings.observer
    register_service("observer")
    observer = await build(settings)
    # Full collections walked the whole heap (start-up's modules, the recorder's and
    # the event store's caches) every few hundred milliseconds under load: a quarter
    # of the observer's CPU at RecordBatch with event ids, by gc.callbacks. Frozen
    # every second, they walk only what changed since (jetsource.core.heap).
    keeper = keep_in_server(o.freeze_every_s)

    def healthy() -> bool:
        return observer.nc.is_connected and observer.health.writable

    metrics = (
        start_metrics_server(
            o.metrics_port,
            o.grpc_host,
            healthy,
            env_var(ObserverSettings, "observer", "metrics_port"),
        )
        if o.metrics_port
        else None
    )
    nats_state = watch_nats(observer.nc, "observer")
    log.info("observer listening on %s:%d", o.grpc_host, observer.port)
    await stop_on_signals().wait()
    log.info("observer shutting down")
    keeper.cancel()
    nats_state.cancel()
    if metrics is not None:
        metrics.shutdown()
    await observer.stop(o.shutdown_grace_s)


def main() -> None:
    run_service("observer", load_settings("observer", ObserverSettings), serve)


if __name__ == "__main__":
    main()
