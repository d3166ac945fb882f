"""Property-based fuzzing of ProcessQueryService: requests built from the request
descriptor of every RPC (any subset of fields, any value their types hold; process
ids often ones that exist) and raw byte bodies, against the service on real NATS and
Valkey with a small seeded ledger. Whatever the input: never UNKNOWN or INTERNAL, and
the service still SERVING and answering afterwards."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.codec import UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.models.registry import ProcessesModel, processes_spec
from jetsource.domains.process.models.timeline import ProcessTimelineModel, timeline_spec
from jetsource.processquery.server import ProcessQuery, build
from jetsource.processquery.settings import ProcessQueryOptions, ProcessQuerySettings
from jetsource.projection.valkey import connect_valkey
from tests.e2e.test_fuzz_grpc import TEXT, message
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.e2e

SERVICE = q.DESCRIPTOR.services_by_name["ProcessQueryService"]
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
KNOWN = ["fz-root", "fz-child", "fz-grand"]


@dataclass
class Fuzzed:
    query: ProcessQuery
    channel: grpc.Channel
    loop: asyncio.AbstractEventLoop


def seed_events() -> list[RecordedEvent]:
    rows = [
        ("fz-grand", 1, "process_started", "fz-child"),
        ("fz-root", 1, "process_started", ""),
        ("fz-child", 1, "process_started", "fz-root"),
        ("fz-grand", 2, "tool_called", ""),
        ("fz-child", 2, "process_failed", ""),
    ]
    out = []
    for seq, (pid, version, kind, parent) in enumerate(rows, start=1):
        body = ProcessEventBody()
        body.data.update({"kind": "agent", "name": pid, "error": "x"})
        env = EventEnvelope(
            event_id=f"e{seq}",
            event_type=kind,
            schema_version=1,
            aggregate_id=pid,
            aggregate_version=version,
            parent_aggregate_id=parent,
            payload=body.SerializeToString(),
        )
        env.occurred_at.FromNanoseconds(1_800_000_000_000_000_000 + seq)
        out.append(RecordedEvent(env, UnknownEvent(kind, 1, b""), seq, 1_800_000_000 * 10**9 + seq))
    return out


@pytest.fixture(scope="module")
def fuzzed(settings: JetsourceSettings) -> Iterator[Fuzzed]:
    unique = "pqfuzz"
    base = projector_settings(settings, unique)
    shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
    s = ProcessQuerySettings(
        **shared,
        projector=base.projector,
        process_query=ProcessQueryOptions(grpc_port=0, metrics_port=0, watch_poll_s=0.2),
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def prepare() -> ProcessQuery:
        redis = connect_valkey(s)
        prefix = s.projector.valkey_prefix
        for model in (
            ProcessesModel(processes_spec(1), redis, prefix),
            ProcessTimelineModel(timeline_spec(1), redis, prefix),
        ):
            await model.drop()
            await model.apply(seed_events())
        await redis.aclose()
        return await build(s)

    query = run(prepare())
    channel = grpc.insecure_channel(f"127.0.0.1:{query.port}")
    try:
        yield Fuzzed(query, channel, loop)
    finally:
        channel.close()
        run(query.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def call(fuzz: Fuzzed, method: MethodDescriptor, body: bytes) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.server_streaming:
            for _ in fuzz.channel.unary_stream(
                path, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )(body, timeout=0.5):
                pass
        else:
            fuzz.channel.unary_unary(
                path, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )(body, timeout=5)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        assert code not in NEVER, (method.name, body, code, exc.details())
        if not method.server_streaming:
            assert code != grpc.StatusCode.DEADLINE_EXCEEDED, method.name
        return code
    return grpc.StatusCode.OK


def with_known_ids(request: Any, pick: str) -> bytes:
    """Half the time the process ids name seeded processes, so requests get past
    NOT_FOUND and reach the models."""
    for name in ("process_id", "root_process_id", "parent_process_id"):
        if name in request.DESCRIPTOR.fields_by_name and pick:
            setattr(request, name, pick)
    out: bytes = request.SerializeToString()
    return out


REQUESTS = st.sampled_from(list(SERVICE.methods)).flatmap(
    lambda m: st.tuples(
        st.just(m),
        st.builds(
            with_known_ids,
            message(m.input_type),
            st.one_of(st.sampled_from(KNOWN), st.just(""), TEXT.filter(lambda t: len(t) < 200)),
        ),
    )
)
RAW = st.tuples(
    st.sampled_from(list(SERVICE.methods)),
    st.one_of(st.binary(max_size=64), st.binary(min_size=1, max_size=8).map(lambda b: b * 9)),
)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(case=REQUESTS)
def test_generated_requests_get_a_defined_status(
    fuzzed: Fuzzed, case: tuple[MethodDescriptor, bytes]
) -> None:
    code = call(fuzzed, *case)
    event(f"{case[0].name}: {code.name}")


@settings(FUZZ, max_examples=60)
@given(case=RAW)
def test_raw_byte_bodies_get_a_defined_status(
    fuzzed: Fuzzed, case: tuple[MethodDescriptor, bytes]
) -> None:
    call(fuzzed, *case)


def test_still_serving_and_answering_after_the_fuzzing(fuzzed: Fuzzed) -> None:
    health = health_pb2_grpc.HealthStub(fuzzed.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    tree = fuzzed.channel.unary_unary(
        f"/{SERVICE.full_name}/GetProcessTree",
        request_serializer=q.GetProcessTreeRequest.SerializeToString,
        response_deserializer=q.GetProcessTreeResponse.FromString,
    )(q.GetProcessTreeRequest(process_id="fz-root"), timeout=5)
    grand = tree.root.children[0].children[0].process
    assert (grand.process_id, grand.root_process_id, grand.depth) == ("fz-grand", "fz-root", 2)
    assert grand.status == q.PROCESS_STATUS_INTERRUPTED  # its parent failed while it ran
