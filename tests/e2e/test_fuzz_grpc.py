"""Property-based fuzzing of both gRPC services (issue 14): arbitrary request messages,
built from the request descriptors of every RPC (every field, any value its type can
hold), and arbitrary byte bodies, sent to the publisher and the query service running
as processes. Whatever the input: never UNKNOWN or INTERNAL, a refused command appends
nothing to the stream, and both services stay SERVING."""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jetsource._gen.context.v1 import commands_pb2 as c
from jetsource._gen.context.v1 import query_pb2 as q
from jetsource.core.settings import JetsourceSettings
from tests.e2e.cli_fixtures import isolated_services
from tests.stack import Services

pytestmark = pytest.mark.e2e

COMMANDS = c.DESCRIPTOR.services_by_name["ContextCommandService"]
QUERIES = q.DESCRIPTOR.services_by_name["ContextQueryService"]
METHODS: list[MethodDescriptor] = [*COMMANDS.methods, *QUERIES.methods]
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
# Ids that exist in the seeded story, so generated requests also reach the domain.
KNOWN = ["fz", "d1", "d2", "s1", "s2"]
T = FieldDescriptor


@dataclass
class Fuzzed:
    services: Services
    channels: dict[str, grpc.Channel]
    stream: str
    loop: asyncio.AbstractEventLoop
    js: Any

    def last_seq(self) -> int:
        future = asyncio.run_coroutine_threadsafe(self.js.stream_info(self.stream), self.loop)
        return int(future.result(10).state.last_seq)

    def serving(self) -> None:
        for name, channel in self.channels.items():
            health = health_pb2_grpc.HealthStub(channel)
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
            assert self.services.alive(name), name


@pytest.fixture(scope="module")
def fuzzed(
    settings: JetsourceSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    services = isolated_services(settings, tmp_path_factory.mktemp("fuzz"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    nc = asyncio.run_coroutine_threadsafe(
        nats.connect(services.env["JETSOURCE_NATS__URL"]), loop
    ).result(10)
    channels: dict[str, grpc.Channel] = {}
    try:
        services.start_all()
        channels = {n: grpc.insecure_channel(services.address(n)) for n in ("publisher", "query")}
        stream = services.env["JETSOURCE_EVENTSTORE__STREAM"]
        fuzz = Fuzzed(services, channels, stream, loop, nc.jetstream())
        seed(fuzz)
        yield fuzz
    finally:
        for channel in channels.values():
            channel.close()
        asyncio.run_coroutine_threadsafe(nc.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        services.stop_all()


def seed(fuzz: Fuzzed) -> None:
    """A story with decisions and subtasks for generated requests to meet."""

    def send(rpc: str, **fields: Any) -> None:
        request = getattr(c, f"{rpc}Request")(
            context_id="fz", options=c.CommandOptions(idempotency_key=uuid.uuid4().hex), **fields
        )
        call(fuzz, COMMANDS.methods_by_name[rpc], request.SerializeToString(), 10.0)

    send("CreateContext", title="fuzzed")
    send("AddDecision", decision_id="d1", title="one")
    send("AddDecision", decision_id="d2", title="two")
    send("AddSubtask", subtask_id="s1", title="task")
    send("AddSubtask", subtask_id="s2", title="task")


def call(fuzz: Fuzzed, method: MethodDescriptor, body: bytes, timeout: float) -> grpc.StatusCode:
    """Send ``body`` as it is; the status code of the answer."""
    service = method.containing_service
    channel = fuzz.channels["publisher" if service is COMMANDS else "query"]
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )(body, timeout=timeout)
            for _ in stream:
                pass
        else:
            channel.unary_unary(
                path, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )(body, timeout=timeout)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        assert code not in NEVER, (method.name, body, code, exc.details())
        return code
    return grpc.StatusCode.OK


# -- strategies over the descriptors ------------------------------------------------------


def _int(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [low, high, 0, 1, -1 if signed else 2, 10**12, 10**12 + 1, 1000, 1001]
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high)
    )


INTS = {
    T.TYPE_INT32: _int(32, True),
    T.TYPE_SINT32: _int(32, True),
    T.TYPE_SFIXED32: _int(32, True),
    T.TYPE_INT64: _int(64, True),
    T.TYPE_SINT64: _int(64, True),
    T.TYPE_SFIXED64: _int(64, True),
    T.TYPE_UINT32: _int(32, False),
    T.TYPE_FIXED32: _int(32, False),
    T.TYPE_UINT64: _int(64, False),
    T.TYPE_FIXED64: _int(64, False),
}
TEXT = st.one_of(
    st.sampled_from(["", " ", *KNOWN, "a.b", "x" * 65, "y" * 101, "z" * 129, "é" * 201]),
    st.text(max_size=20),
    st.text(alphabet="abc-_09", min_size=1, max_size=70),
    st.integers(95, 10_050).map(lambda n: "w" * n),
)
TIMESTAMPS = st.builds(
    Timestamp,
    seconds=st.one_of(
        _int(64, True),
        st.sampled_from([-1, 0, -62_135_596_800, -62_135_596_801, 253_402_300_799]),
        st.integers(1_600_000_000, 1_900_000_000),
    ),
    nanos=st.one_of(st.sampled_from([-1, 0, 999_999_999, 10**9]), _int(32, True)),
)


# Fields that decide whether a request gets past validation: mostly plausible values
# (so generated requests reach the domain and the stores), sometimes anything.
IDS = st.one_of(st.sampled_from(KNOWN), st.text(alphabet="ab12-_", min_size=1, max_size=8))
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "context_id": st.one_of(st.sampled_from(["fz", "fz", "fz2"]), IDS, TEXT),
    "idempotency_key": st.one_of(st.uuids().map(str), st.uuids().map(str), TEXT),
    "decision_id": st.one_of(IDS, TEXT),
    "subtask_id": st.one_of(IDS, TEXT),
    "superseded_by": st.one_of(IDS, TEXT),
    "from_id": st.one_of(IDS, TEXT),
    "to_id": st.one_of(IDS, TEXT),
    "root_id": st.one_of(st.just(""), IDS, TEXT),
    "actor": st.one_of(st.just("fuzzer"), TEXT),
    "title": st.one_of(st.just("a title"), TEXT),
    # crafted tokens of the kind an old, readable token format would take
    "page_token": st.one_of(
        st.builds(
            lambda kind, n: base64.urlsafe_b64encode(f"{kind}:{n}".encode()).decode(),
            st.sampled_from(["ev", "ctx"]),
            st.one_of(_int(64, True), st.integers(0, 10**25)),
        ),
        TEXT,
    ),
}
# Present in most generated requests (absent ones are refused before anything else).
MOSTLY_SET = {"context_id", "options", "idempotency_key", "title", "page_token"}


def value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.name in PLAUSIBLE and not field.is_repeated:
        return PLAUSIBLE[field.name]
    if field.type == T.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return TIMESTAMPS
        return message(field.message_type, depth + 1)
    if field.type == T.TYPE_STRING:
        return TEXT
    if field.type == T.TYPE_BYTES:
        return st.binary(max_size=32)
    if field.type == T.TYPE_BOOL:
        return st.booleans()
    if field.type == T.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _int(32, True))
    if field.type in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return st.floats(allow_nan=True, width=32 if field.type == T.TYPE_FLOAT else 64)
    return INTS[field.type]


def message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with any subset of its fields set to any value."""
    cls = _class(descriptor)
    if depth > 3:
        return st.just(cls())
    fixed: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        one = value(field, depth)
        repeated = field.is_repeated
        if field.name in MOSTLY_SET:
            fixed[field.name] = st.one_of(one, one, one, st.none())
        else:
            optional[field.name] = st.lists(one, max_size=3) if repeated else one

    def build(values: dict[str, Any]) -> Message:
        out = cls()
        for name, v in values.items():
            if v is None:
                continue
            field = descriptor.fields_by_name[name]
            target = getattr(out, name) if field.type == T.TYPE_MESSAGE else None
            if field.is_repeated:
                if field.type == T.TYPE_MESSAGE:
                    for item in v:
                        getattr(out, name).add().CopyFrom(item)
                else:
                    getattr(out, name).extend(v)
            elif target is not None:
                target.CopyFrom(v)
            else:
                setattr(out, name, v)
        return out

    return st.fixed_dictionaries(fixed, optional=optional).map(build)


def _class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


REQUESTS = st.sampled_from(METHODS).flatmap(
    lambda m: st.tuples(st.just(m), message(m.input_type).map(lambda r: r.SerializeToString()))
)
RAW = st.tuples(
    st.sampled_from(METHODS),
    st.one_of(st.binary(max_size=64), st.binary(min_size=1, max_size=8).map(lambda b: b * 9)),
)
# Query calls that wait (read-your-writes, watches) end within this.
QUERY_TIMEOUT = 1.0


def check(fuzz: Fuzzed, method: MethodDescriptor, body: bytes) -> None:
    is_command = method.containing_service is COMMANDS
    before = fuzz.last_seq() if is_command else 0
    code = call(fuzz, method, body, 5.0 if is_command else QUERY_TIMEOUT)
    event(f"{method.name}: {code.name}")
    if not is_command:
        allowed_deadline = method.server_streaming or method.name == "GetContext"
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED or allowed_deadline, method.name
        return
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, method.name
    if code != grpc.StatusCode.OK:
        assert fuzz.last_seq() == before, f"{method.name} refused with {code} but appended"


FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(case=REQUESTS)
def test_generated_requests_get_a_defined_status_and_refusals_append_nothing(
    fuzzed: Fuzzed, case: tuple[MethodDescriptor, bytes]
) -> None:
    check(fuzzed, *case)


@settings(FUZZ, max_examples=150)
@given(case=RAW)
def test_raw_byte_bodies_get_a_defined_status_and_append_nothing_on_refusal(
    fuzzed: Fuzzed, case: tuple[MethodDescriptor, bytes]
) -> None:
    check(fuzzed, *case)


def test_both_services_still_serving_after_the_fuzzing(fuzzed: Fuzzed) -> None:
    fuzzed.serving()
    # and still answer real requests
    code = call(
        fuzzed,
        QUERIES.methods_by_name["GetContext"],
        q.GetContextRequest(context_id="fz").SerializeToString(),
        5.0,
    )
    assert code == grpc.StatusCode.OK
