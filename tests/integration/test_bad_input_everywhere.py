"""Bad input on every public entry point, the way an outside checker sends it: every RPC of
the context publisher and query service (as processes), the process query service and
the omni query service (in this process, on their own ports), and the ingest's REST reads
(over HTTP). Each request carries hostile values in one or more fields: empty, oversized
and odd strings, ids with spaces, slashes, wildcards, dots or NUL, negative and huge
integers, out-of-range timestamps, unknown enum numbers, garbage and other methods' page
tokens, missing fields, and string fields that are not UTF-8.

Whatever the input: the answer is OK or a client-error status (never UNKNOWN, INTERNAL,
DATA_LOSS, or HTTP 5xx); an INVALID_ARGUMENT (HTTP 400/422) names a field of the request;
and a refused command or status update writes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import nats
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetsource._gen.context.v1 import commands_pb2 as c
from jetsource._gen.context.v1 import query_pb2 as cq
from jetsource._gen.omni.v1 import query_pb2 as oq
from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource._gen.process.v1 import query_pb2 as pq
from jetsource.client import error_details
from jetsource.core.settings import JetsourceSettings
from jetsource.ingest.server import Ingest
from jetsource.ingest.server import build as build_ingest
from jetsource.observer.server import Observer
from jetsource.observer.server import build as build_observer
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from jetsource.processquery.server import ProcessQuery
from jetsource.processquery.server import build as build_process_query
from jetsource.processquery.settings import ProcessQueryOptions, ProcessQuerySettings
from tests.e2e.cli_fixtures import isolated_services
from tests.fixtures.omni import FIXTURES, HERE
from tests.infra import Server
from tests.integration.omni.harness import caught_up, headers_for, omni_settings, projector, route
from tests.projector_fixtures import projector_settings
from tests.stack import Services

pytestmark = pytest.mark.integration
Code = grpc.StatusCode
T = FieldDescriptor

COMMANDS = c.DESCRIPTOR.services_by_name["ContextCommandService"]
CONTEXT_QUERIES = cq.DESCRIPTOR.services_by_name["ContextQueryService"]
PROCESS_QUERIES = pq.DESCRIPTOR.services_by_name["ProcessQueryService"]
OMNI_QUERIES = oq.DESCRIPTOR.services_by_name["OmniQueryService"]
OBSERVER = ob.DESCRIPTOR.services_by_name["ObserverService"]
SERVICES = {
    COMMANDS.full_name: "publisher",
    CONTEXT_QUERIES.full_name: "query",
    PROCESS_QUERIES.full_name: "process",
    OMNI_QUERIES.full_name: "omni",
    OBSERVER.full_name: "observer",
}
METHODS: list[MethodDescriptor] = [
    m
    for s in (COMMANDS, CONTEXT_QUERIES, PROCESS_QUERIES, OMNI_QUERIES, OBSERVER)
    for m in s.methods
    if not m.client_streaming
]
WRITERS = {COMMANDS.full_name, OBSERVER.full_name}
# Refusals that name the request's field they are about (details, else the message).
# (FAILED_PRECONDITION is about the state a valid request met: a domain rule, a model
# not caught up; it names the rule, not a field.)
NAMING = {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.OUT_OF_RANGE}
NEVER = {Code.UNKNOWN, Code.INTERNAL, Code.DATA_LOSS}
CLIENT = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.FAILED_PRECONDITION,
    Code.OUT_OF_RANGE,
    Code.ABORTED,  # expected_version mismatch
    Code.ALREADY_EXISTS,
    Code.DEADLINE_EXCEEDED,  # only where a call may wait (checked below)
}
# Calls that may wait for something (read-your-writes, watches): their short deadline
# passing is not a refusal.
WAITING = {"GetContext", "WatchContext", "WatchProcess", "WatchSession"}

# -- hostile values ------------------------------------------------------------------------

BAD_TEXT = [
    "",
    " ",
    "a b",
    "a/b",
    "/",
    "*",
    ">",
    "a.*",
    "a.>",
    "a.b",
    ".",
    "..",
    "a\x00b",
    "\x00",
    "\t",
    "\n",
    "a\nb",
    "é",
    "\u202e",
    "💥",
    "\ufeff",
    "x" * 129,
    "y" * 1025,
    "z" * 70_000,
    "%2F",
    "../etc",
    "\\",
    "$JS",
    "-1",
    "null",
]
GOOD_IDS = ["fz", "d1", "s1", "fz2"]
TEXT = st.one_of(
    st.sampled_from(BAD_TEXT),
    st.sampled_from(GOOD_IDS),
    st.text(max_size=12),
    st.integers(100, 5000).map(lambda n: "w" * n),
)


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [low, high, low + 1, high - 1, 0, 1, -1, 2, 1000, 1001, 10**6, 10**12, 2**31, 2**53]
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high)
    )


INTS = {
    T.TYPE_INT32: _ints(32, True),
    T.TYPE_SINT32: _ints(32, True),
    T.TYPE_SFIXED32: _ints(32, True),
    T.TYPE_INT64: _ints(64, True),
    T.TYPE_SINT64: _ints(64, True),
    T.TYPE_SFIXED64: _ints(64, True),
    T.TYPE_UINT32: _ints(32, False),
    T.TYPE_FIXED32: _ints(32, False),
    T.TYPE_UINT64: _ints(64, False),
    T.TYPE_FIXED64: _ints(64, False),
}
YEAR_1 = -62_135_596_800
YEAR_10000 = 253_402_300_800
TIMESTAMPS = st.builds(
    Timestamp,
    seconds=st.one_of(
        st.sampled_from(
            [YEAR_1 - 1, YEAR_1, YEAR_10000, YEAR_10000 - 1, -1, 0, 2**63 - 1, -(2**63)]
        ),
        st.integers(1_600_000_000, 1_900_000_000),
        _ints(64, True),
    ),
    nanos=st.one_of(st.sampled_from([-1, 0, 999_999_999, 10**9, -(2**31)]), _ints(32, True)),
)


def _token(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


FORGED_TOKENS = st.one_of(
    st.sampled_from(["", "x", "====", "AAAA", "!!!", "a" * 5000, "\x00", "é"]),
    st.binary(max_size=64).map(_token),
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=20),
)


@dataclass(repr=False)
class Everything:
    services: Services
    loop: asyncio.AbstractEventLoop
    channels: dict[str, grpc.Channel]
    js: Any
    stream: str
    omni_stream: str
    process_stream: str
    ingest: Ingest
    process: ProcessQuery
    observer: Observer
    http: httpx.Client
    tokens: list[str] = field(default_factory=list)
    omni_events: list[str] = field(default_factory=list)
    own_tokens: dict[str, set[str]] = field(default_factory=dict)
    identities: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return "Everything()"

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def last_seq(self, stream: str) -> int:
        return int(self.run(self.js.stream_info(stream)).state.last_seq)


@pytest.fixture(scope="module")
def everything(
    settings: JetsourceSettings,
    nats_server: Server,
    valkey_server: Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Everything]:
    unique = uuid.uuid4().hex[:10]
    services = isolated_services(settings, tmp_path_factory.mktemp("bad-input"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    nc = run(nats.connect(nats_server.url))
    stack = contextlib.AsyncExitStack()
    channels: dict[str, grpc.Channel] = {}
    ingest: Ingest | None = None
    process: ProcessQuery | None = None
    observer: Observer | None = None
    http: httpx.Client | None = None
    try:
        services.start("publisher")
        services.start("query")
        base = projector_settings(settings, unique, models=["processes", "process_timeline"])
        shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
        process = run(
            build_process_query(
                ProcessQuerySettings(
                    **shared,
                    projector=base.projector,
                    process_query=ProcessQueryOptions(
                        grpc_port=0, metrics_port=0, watch_poll_s=0.2
                    ),
                )
            )
        )
        observer = run(
            build_observer(
                ObserverSettings(
                    **shared,
                    observer=ObserverOptions(
                        grpc_port=0, metrics_port=0, claims_bucket=f"CL_{unique}"
                    ),
                )
            )
        )
        isettings = omni_settings(nats_server.url, valkey_server.url, unique)
        ingest = run(build_ingest(isettings))
        run(ingest.start_http("127.0.0.1", 0))
        projection = run(stack.enter_async_context(projector(isettings)))
        channels = {
            "publisher": grpc.insecure_channel(services.address("publisher")),
            "query": grpc.insecure_channel(services.address("query")),
            "process": grpc.insecure_channel(f"127.0.0.1:{process.port}"),
            "omni": grpc.insecure_channel(f"127.0.0.1:{ingest.grpc.port}"),
            "observer": grpc.insecure_channel(f"127.0.0.1:{observer.port}"),
        }
        http = httpx.Client(base_url=f"http://127.0.0.1:{ingest.http_port}", timeout=10)
        everything = Everything(
            services,
            loop,
            channels,
            nc.jetstream(),
            services.env["JETSOURCE_EVENTSTORE__STREAM"],
            isettings.omni.events_stream,
            observer.store.settings.stream,
            ingest,
            process,
            observer,
            http,
        )
        seed(everything)
        seed_omni(everything)
        run(caught_up(projection))
        omni_tokens(everything)
        yield everything
    finally:
        if http is not None:
            http.close()
        for channel in channels.values():
            channel.close()
        run(stack.aclose())
        if ingest is not None:
            run(ingest.stop(0))
        if process is not None:
            run(process.stop(0))
        if observer is not None:
            run(observer.stop(0))
        run(nc.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        services.stop_all()


def seed(e: Everything) -> None:
    """Two stories with decisions and subtasks, and real page tokens of every paged
    method that has data (to be sent to the other methods and stories)."""
    stubs = {
        "CreateContext": c.CreateContextRequest,
        "AddDecision": c.AddDecisionRequest,
        "AddSubtask": c.AddSubtaskRequest,
    }

    def send(rpc: str, story: str, **fields: Any) -> None:
        request = stubs[rpc](
            context_id=story, options=c.CommandOptions(idempotency_key=uuid.uuid4().hex), **fields
        )
        call(e, COMMANDS.methods_by_name[rpc], request.SerializeToString(), 10.0)

    for story in ("fz", "fz2"):
        send("CreateContext", story, title="bad input")
        send("AddDecision", story, decision_id="d1", title="one")
        send("AddSubtask", story, subtask_id="s1", title="task")
    events = cq.ListEventsResponse.FromString(
        _unary(e, CONTEXT_QUERIES.methods_by_name["ListEvents"])(
            cq.ListEventsRequest(context_id="fz", limit=1).SerializeToString(), timeout=10
        )
    )
    e.tokens.append(events.next_page_token)
    e.own_tokens.setdefault("jetsource.context.v1.ContextQueryService.ListEvents", set())
    # ListContexts pages over the whole index: a token whenever there are two stories.
    listed = cq.ListContextsResponse.FromString(
        _unary(e, CONTEXT_QUERIES.methods_by_name["ListContexts"])(
            cq.ListContextsRequest(page_size=1).SerializeToString(), timeout=10
        )
    )
    e.tokens.append(listed.next_page_token)
    e.own_tokens["jetsource.context.v1.ContextQueryService.ListContexts"] = {listed.next_page_token}
    e.tokens[:] = [t for t in e.tokens if t]
    assert e.tokens, "no page token to replay"


def seed_omni(e: Everything) -> None:
    """Messages through the webhooks (events and identities in the omni models)."""
    for path in ("whatsapp/cloud/text.json", "discord/text.json", "discord/reaction_add.json"):
        f = next(f for f in FIXTURES if f.path == path)
        body = (HERE / path).read_bytes()
        answer = e.http.post(route(f.instance), content=body, headers=headers_for(f.instance, body))
        assert answer.status_code == 200, answer.text
        e.omni_events += [x["id"] for x in answer.json()["events"]]


def omni_tokens(e: Everything) -> None:
    """Real page tokens of the omni lists, and the identities the webhooks made."""
    recent = e.http.get("/api/v1/events", params={"page_size": 1}).json()
    listed = e.http.get("/api/v1/identities", params={"page_size": 1}).json()
    e.identities += [
        i["identityId"] if "identityId" in i else i["identity_id"] for i in listed["identities"]
    ]
    e.tokens += [t for t in (recent["next_page_token"], listed["next_page_token"]) if t]
    e.own_tokens[f"{OMNI_QUERIES.full_name}.ListRecentEvents"] = {recent["next_page_token"]}
    e.own_tokens[f"{OMNI_QUERIES.full_name}.ListIdentities"] = {listed["next_page_token"]}


def _unary(e: Everything, method: MethodDescriptor) -> Any:
    service = method.containing_service
    path = f"/{service.full_name}/{method.name}"
    channel = e.channels[SERVICES[service.full_name]]
    if method.server_streaming:
        return channel.unary_stream(
            path, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
    return channel.unary_unary(
        path, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def call(
    e: Everything, method: MethodDescriptor, body: bytes, timeout: float
) -> grpc.RpcError | None:
    """Send ``body`` as it is: None when it was answered OK, else the error."""
    try:
        answer = _unary(e, method)(body, timeout=timeout)
        if method.server_streaming:
            for _ in answer:
                pass
    except grpc.RpcError as exc:
        return exc
    return None


# -- requests built from the descriptors ---------------------------------------------------


def _class(descriptor: Descriptor) -> Any:
    return message_factory.GetMessageClass(descriptor)


def names_of(descriptor: Descriptor, depth: int = 0) -> set[str]:
    """Every field name (and dotted path) of a request, at any depth."""
    out: set[str] = set()
    for f in descriptor.fields:
        out.add(f.name)
        if f.type == T.TYPE_MESSAGE and depth < 3 and f.message_type is not None:
            for inner in names_of(f.message_type, depth + 1):
                out.add(inner)
                out.add(f"{f.name}.{inner}")
    return out


def pools(e: Everything) -> dict[str, list[Any]]:
    """Values a field takes in a request that gets past it, so that the hostile value
    of another field is what the service meets."""
    return {
        "context_id": ["fz", "fz2"],
        "decision_id": ["d1", "d9"],
        "subtask_id": ["s1", "s9"],
        "superseded_by": ["d1", "d9"],
        "from_id": ["s1", "d1"],
        "to_id": ["s1", "d1"],
        "root_id": ["d1", ""],
        "actor": ["checker"],
        "title": ["a title"],
        "process_id": ["p1"],
        "session_id": ["p1"],
        "root_process_id": ["p1"],
        "parent_process_id": ["p1"],
        "event_id": e.omni_events or ["x"],
        "identity_id": e.identities or ["idn-x"],
        "provider": ["whatsapp", "discord"],
        "instance": ["acme-cloud", "acme-bot"],
        "conversation_id": ["c1"],
        "event_type": ["step_done", "process_started"],
        "source": ["checker"],
        "external_id": ["15550001111"],
        "page_size": [1, 2],
        "limit": [1, 2],
        "version": [1, 2, 3],
        "page_token": e.tokens,
        "idempotency_key": [uuid.uuid4().hex],
    }


def plausible(e: Everything, name: str) -> st.SearchStrategy[Any] | None:
    if name == "idempotency_key":
        return st.uuids().map(str)
    pool = pools(e).get(name)
    return st.sampled_from(pool) if pool else None


def value(e: Everything, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    hostile = _hostile(e, f, depth)
    good = None if f.is_repeated or f.type == T.TYPE_ENUM else plausible(e, f.name)
    return hostile if good is None else st.one_of(good, hostile)


def _hostile(e: Everything, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    e_tokens = e.tokens
    if f.type == T.TYPE_MESSAGE:
        assert f.message_type is not None
        if f.message_type.full_name == "google.protobuf.Timestamp":
            return TIMESTAMPS
        if f.message_type.full_name == "google.protobuf.Struct":
            return st.dictionaries(
                TEXT,
                st.one_of(TEXT, st.floats(), st.booleans(), st.none(), st.lists(TEXT, max_size=2)),
                max_size=3,
            ).map(_struct)
        if _is_map(f) and f.message_type.fields_by_name["value"].message_type is not None:
            return st.just({})
        if _is_map(f):
            return st.dictionaries(TEXT, TEXT, max_size=2)
        return message(e, f.message_type, depth + 1)
    if f.type == T.TYPE_STRING:
        if f.name == "page_token":
            return st.one_of(FORGED_TOKENS, st.sampled_from(e_tokens))
        if f.name == "idempotency_key":
            return st.one_of(st.uuids().map(str), TEXT)
        return TEXT
    if f.type == T.TYPE_BYTES:
        return st.binary(max_size=32)
    if f.type == T.TYPE_BOOL:
        return st.booleans()
    if f.type == T.TYPE_ENUM:
        assert f.enum_type is not None
        known = [v.number for v in f.enum_type.values]
        return st.one_of(
            st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1]), _ints(32, True)
        )
    if f.type in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return st.floats(allow_nan=True, width=32 if f.type == T.TYPE_FLOAT else 64)
    return INTS[f.type]


def _struct(values: dict[str, Any]) -> Any:
    from google.protobuf.struct_pb2 import Struct

    out = Struct()
    out.update(values)
    return out


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and bool(f.message_type.GetOptions().map_entry)


def message(e: Everything, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = _class(descriptor)
    if depth > 2:
        return st.just(cls())
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        one = value(e, f, depth)
        parts[f.name] = one if _is_map(f) or not f.is_repeated else st.lists(one, max_size=3)

    def build(values: dict[str, Any]) -> Any:
        out = cls()
        for name, v in values.items():
            f = descriptor.fields_by_name[name]
            target = getattr(out, name)
            if _is_map(f):
                target.update(v)
            elif f.is_repeated and f.type == T.TYPE_MESSAGE:
                for item in v:
                    target.add().CopyFrom(item)
            elif f.is_repeated:
                target.extend(v)
            elif f.type == T.TYPE_MESSAGE:
                target.CopyFrom(v)
            else:
                setattr(out, name, v)
        return out

    # any subset of the fields: a missing field is one of the bad inputs
    return st.fixed_dictionaries({}, optional=parts).map(build)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def not_utf8(descriptor: Descriptor, body: bytes, name: str) -> bytes:
    """``body`` with string field ``name`` set to bytes that are not UTF-8 (the last
    occurrence of a field wins in protobuf)."""
    number = descriptor.fields_by_name[name].number
    junk = b"a\xff\xfe\xc3(\xed\xa0\x80"
    return body + _varint(number << 3 | 2) + _varint(len(junk)) + junk


# -- the checks ---------------------------------------------------------------------------


def names_a_field(error: grpc.RpcError, method: MethodDescriptor) -> bool:
    """The error's BadRequest detail (or else its message) names a field of the request
    (or "request body", when the body itself is not a valid message)."""
    known = names_of(method.input_type) | {"request body"}
    fields = error_details(error).fields
    if fields:
        return all(f in known or f.split(".")[-1].split("[")[0] in known for f in fields)
    text = (error.details() or "").lower()
    return any(name in text for name in known)


ID_FIELDS = {
    "context_id",
    "decision_id",
    "subtask_id",
    "superseded_by",
    "from_id",
    "to_id",
    "root_id",
    "process_id",
    "session_id",
    "root_process_id",
    "parent_process_id",
    "event_id",
    "identity_id",
}
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def bad_id(request: Message) -> str | None:
    """The name of an id field holding a value no id can have (chars other than
    letters, digits, '-' and '_', or past 128 characters); empty ids are optional
    for some fields and left to the services."""
    for f in request.DESCRIPTOR.fields:
        if f.name in ID_FIELDS and f.type == T.TYPE_STRING and not f.is_repeated:
            v = getattr(request, f.name)
            if v and (len(v) > 128 or not set(v) <= _ID_CHARS or v[0] in "-_"):
                return f.name
    return None


def check(
    e: Everything, method: MethodDescriptor, body: bytes, request: Message | None = None
) -> None:
    is_command = method.containing_service.full_name in WRITERS
    stream = e.stream if method.containing_service is COMMANDS else e.process_stream
    before = e.last_seq(stream) if is_command else 0
    error = call(e, method, body, 5.0 if is_command or method.name not in WAITING else 1.0)
    code = Code.OK if error is None else error.code()
    detail = "" if error is None else error.details()
    where = f"{method.containing_service.name}.{method.name}"
    assert code not in NEVER, (where, body[:300], code, detail)
    assert code in CLIENT, (where, body[:300], code, detail)
    if code == Code.DEADLINE_EXCEEDED:
        assert method.name in WAITING, (where, body[:300], code, detail)
    if code in NAMING:
        assert error is not None
        assert names_a_field(error, method), (where, code, detail, error_details(error))
    wrong = bad_id(request) if request is not None else None
    if wrong is not None:
        assert code != Code.OK, (where, wrong, getattr(request, wrong)[:80], "answered OK")
    if is_command and code != Code.OK:
        assert e.last_seq(stream) == before, f"{where} refused with {code} but appended"


# Examples per RPC: 25 keeps the module near 40 s; BAD_INPUT_EXAMPLES=500 for a long hunt.
EXAMPLES = int(os.environ.get("BAD_INPUT_EXAMPLES", "25"))
FAST = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _name(m: MethodDescriptor) -> str:
    return f"{m.containing_service.name}.{m.name}"


@pytest.mark.parametrize("method", METHODS, ids=_name)
@settings(FAST, max_examples=EXAMPLES)
@given(data=st.data())
def test_hostile_requests_get_a_client_error_naming_the_field(
    everything: Everything, data: st.DataObject, method: MethodDescriptor
) -> None:
    request = data.draw(message(everything, method.input_type), label="request")
    check(everything, method, request.SerializeToString(), request)


STRING_FIELDS = [
    (m, f.name)
    for m in METHODS
    for f in m.input_type.fields
    if f.type == T.TYPE_STRING and not f.is_repeated
]


@settings(FAST, max_examples=60)
@given(case=st.sampled_from(STRING_FIELDS), data=st.data())
def test_a_string_field_that_is_not_utf8_is_refused_naming_the_body(
    everything: Everything, case: tuple[MethodDescriptor, str], data: st.DataObject
) -> None:
    method, name = case
    request = data.draw(message(everything, method.input_type), label="request")
    check(everything, method, not_utf8(method.input_type, request.SerializeToString(), name))


def _plausible_request(e: Everything, method: MethodDescriptor) -> Any:
    request = _class(method.input_type)()
    good = pools(e)
    for f in method.input_type.fields:
        if f.name == "page_token" or f.is_repeated or f.type == T.TYPE_ENUM or f.name not in good:
            continue
        setattr(request, f.name, good[f.name][0])
    if "options" in method.input_type.fields_by_name:
        request.options.idempotency_key = uuid.uuid4().hex
    return request


BIG = {"1 MB": "b" * 1_100_000, "3 MB": "c" * 3_000_000}


@pytest.mark.parametrize("method", METHODS, ids=_name)
def test_oversized_strings_and_long_lists_are_refused_naming_the_field(
    everything: Everything, method: MethodDescriptor
) -> None:
    """Each string field (one at a time, the others plausible) 1 MB and 3 MB long (past
    NATS' max payload, under gRPC's 4 MB), each repeated field 20,000 entries long."""
    fields = [f for f in method.input_type.fields if f.type in (T.TYPE_STRING, T.TYPE_ENUM)]
    for f in fields:
        variants: list[Any] = []
        if f.is_repeated:
            one = ["t1"] if f.type == T.TYPE_STRING else [1]
            variants = [one * 20_000]
        elif f.type == T.TYPE_STRING:
            variants = list(BIG.values())
        for v in variants:
            request = _plausible_request(everything, method)
            if f.is_repeated:
                getattr(request, f.name).extend(v)
            else:
                setattr(request, f.name, v)
            check(everything, method, request.SerializeToString(), request)
    if "options" in method.input_type.fields_by_name:
        for name in ("idempotency_key", "actor", "correlation_id", "causation_id"):
            request = _plausible_request(everything, method)
            setattr(request.options, name, BIG["1 MB"])
            check(everything, method, request.SerializeToString(), request)


@pytest.mark.parametrize("method", METHODS, ids=_name)
@settings(FAST, max_examples=10)
@given(
    body=st.one_of(
        st.binary(max_size=48),
        st.sampled_from(
            [
                b"\x0a",  # a length-delimited field cut short
                b"\x0a\xff\xff\xff\xff\x0f",  # a length past the body
                b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # varint too long
                b"\x0b\x0c",  # a group
                b"\x0d\x00",  # fixed32 cut short
                b"\x0a\x02\xc3\x28",  # field 1 not UTF-8
                b"\x12\x03\xed\xa0\x80",  # field 2 a surrogate
                b"\xf8\xff\xff\xff\x0f\x00",  # an unknown field number at the edge
            ]
        ),
    )
)
def test_raw_bodies_that_are_no_request_get_a_client_error(
    everything: Everything, method: MethodDescriptor, body: bytes
) -> None:
    check(everything, method, body)


# Every page-token-bearing method, with a real token of another method or story.
PAGED = [m for m in METHODS if "page_token" in m.input_type.fields_by_name]


@pytest.mark.parametrize("method", PAGED, ids=_name)
def test_a_page_token_of_another_method_is_refused_naming_page_token(
    everything: Everything, method: MethodDescriptor
) -> None:
    """Every real token the seeding collected (ListEvents of story fz, ListContexts,
    ListRecentEvents, ListIdentities) sent to every paged method: each method accepts
    only its own (for the same story or filter), and refuses the others."""
    cls = _class(method.input_type)
    mine = everything.own_tokens.get(method.full_name, set())
    for token in everything.tokens:
        if token in mine:
            continue
        request = cls(page_token=token)
        good = pools(everything)
        for f in method.input_type.fields:
            if f.name == "context_id":
                request.context_id = "fz2"  # the ListEvents token is of story fz
            elif f.name != "page_token" and f.name in good and f.type == T.TYPE_STRING:
                setattr(request, f.name, good[f.name][0])
        error = call(everything, method, request.SerializeToString(), 2.0)
        assert error is not None, (method.full_name, token, "accepted a token not its own")
        assert error.code() == Code.INVALID_ARGUMENT, (method.name, token, error.details())
        assert "page_token" in error_details(error).fields, (method.name, error.details())


# -- the ingest's REST reads ------------------------------------------------------------

PATH_TEXT = st.one_of(
    st.sampled_from([t for t in BAD_TEXT if t and len(t) < 2000 and t not in (".", "..")]),
    st.sampled_from(["whatsapp", "discord", "acme-cloud", "x"]),
    st.text(min_size=1, max_size=12).filter(lambda t: t not in (".", "..")),
)
QUERY_VALUE = st.one_of(
    st.sampled_from(BAD_TEXT[:20]),
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "1000000",
            str(2**63),
            str(2**64 + 5),
            "1e3",
            "abc",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "10000-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "1970-01-01T00:00:00-99:00",
            "true",
            "maybe",
        ]
    ),
    FORGED_TOKENS,
)
READS = [
    ("/api/v1/events", []),
    ("/api/v1/events/{0}", ["event_id"]),
    ("/api/v1/raw/{0}", ["raw_id"]),
    ("/api/v1/conversations/{0}/{1}/{2}", ["provider", "instance", "conversation_id"]),
    ("/api/v1/identities", []),
    ("/api/v1/identities/{0}", ["identity_id"]),
    ("/api/v1/identities/{0}/timeline", ["identity_id"]),
    ("/api/v1/handles/{0}/{1}", ["provider", "external_id"]),
]
PARAMS = [
    "instance",
    "provider",
    "type",
    "direction",
    "since",
    "page_size",
    "page_token",
    "include_merged",
    "include_raw",
]


def rest_check(e: Everything, method: str, path: str | httpx.URL, **kwargs: Any) -> httpx.Response:
    answer = e.http.request(method, path, **kwargs)
    assert answer.status_code < 500, (method, path, kwargs, answer.status_code, answer.text)
    if answer.status_code in (400, 422):
        body = answer.json()
        if "error" in body:
            assert body["error"].get("field"), (path, kwargs, body)
        else:  # FastAPI's own request validation: each entry locates its field
            assert all(d.get("loc") for d in body["detail"]), (path, kwargs, body)
    if answer.status_code == 404 and "error" in answer.json():
        # an unknown event, raw payload, identity or handle (not an unknown route)
        assert answer.json()["error"].get("field"), (path, kwargs, answer.text)
    return answer


@FAST
@given(
    read=st.sampled_from(READS),
    segments=st.lists(PATH_TEXT, min_size=3, max_size=3),
    params=st.dictionaries(st.sampled_from(PARAMS), QUERY_VALUE, max_size=4),
)
def test_rest_reads_answer_hostile_input_with_a_4xx_naming_the_field(
    everything: Everything,
    read: tuple[str, list[str]],
    segments: list[str],
    params: dict[str, str],
) -> None:
    template, _ = read
    path = template.format(*(urllib.parse.quote(s, safe="") for s in segments))
    rest_check(everything, "GET", path, params=params)


@settings(FAST, max_examples=80)
@given(
    data=st.data(),
    update=st.fixed_dictionaries(
        {},
        optional={
            "state": st.one_of(
                st.sampled_from(["processing", "completed", "failed"]), st.sampled_from(BAD_TEXT)
            ),
            "worker": st.sampled_from(BAD_TEXT),
            "attempt": st.one_of(st.sampled_from([0, -1, 2**63, 2**64 + 1, 10**30]), st.integers()),
            "reason": st.sampled_from(BAD_TEXT),
            "will_retry": st.one_of(st.booleans(), st.just("maybe")),
        },
    ),
)
def test_a_refused_status_update_writes_nothing(
    everything: Everything, data: st.DataObject, update: dict[str, Any]
) -> None:
    event_id = data.draw(st.one_of(PATH_TEXT, st.sampled_from(everything.omni_events)))
    before = everything.last_seq(everything.omni_stream)
    path = f"/api/v1/events/{urllib.parse.quote(event_id, safe='')}/status"
    answer = rest_check(everything, "POST", path, json=update)
    if answer.status_code >= 400:
        assert everything.last_seq(everything.omni_stream) == before, (path, update)


QUERY_SAMPLES = [
    "",
    " ",
    "a b",
    "*",
    ">",
    "a.b",
    "\x00",
    "é",
    "x" * 5000,
    "0",
    "-1",
    "1",
    "1000000",
    str(2**63),
    str(2**64 + 5),
    "1e3",
    "abc",
    "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "10000-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00-99:00",
    "2026-01-01T00:00:00.9999999999Z",
    "1970-01-01T00:00:00Z",
    "true",
    "maybe",
]


@pytest.mark.parametrize("read", [t for t, _ in READS], ids=str)
def test_every_query_parameter_of_every_rest_read_with_every_odd_value(
    everything: Everything, read: str
) -> None:
    path = read.format("whatsapp", "acme-cloud", "c1")
    if "identities/" in path:
        path = read.format(everything.identities[0] if everything.identities else "idn-x")
    elif "/events/" in path:
        path = read.format(everything.omni_events[0])
    for name in PARAMS:
        for v in QUERY_SAMPLES:
            rest_check(everything, "GET", path, params={name: v})


RAW_PATHS = [
    "/api/v1/events/%FF",
    "/api/v1/events/%C0%80",
    "/api/v1/events/%00",
    "/api/v1/events/%ED%A0%80",
    "/api/v1/raw/%FF%FE",
    "/api/v1/identities/%FF",
    "/api/v1/identities/idn-%FF/timeline",
    "/api/v1/handles/whatsapp/%FF",
    "/api/v1/handles/%FF/1",
    "/api/v1/conversations/whatsapp/%FF/%FE",
    "/api/v1/events?page_token=%FF",
    "/api/v1/events?since=%FF",
    "/api/v1/events?page_size=%00",
    "/api/v1/events?instance=%FF&provider=%FE",
    "/api/v1/events?type=%FF&direction=%FF",
    "/api/v1/identities?provider=%FF&include_merged=%FF",
    "/api/v1/identities?page_size=1&page_size=-1",
    "/api/v1/events/x?include_raw=%FF",
]


@pytest.mark.parametrize("path", RAW_PATHS)
def test_rest_reads_of_bytes_that_are_not_utf8_are_a_4xx(everything: Everything, path: str) -> None:
    """Percent-escapes that decode to no text, as a client could send them."""
    rest_check(everything, "GET", httpx.URL(path))
    rest_check(everything, "POST", httpx.URL(path.split("?")[0] + "/status"), content=b"\xff{")


def test_every_service_still_answers_after_the_bad_input(everything: Everything) -> None:
    assert (
        call(
            everything,
            CONTEXT_QUERIES.methods_by_name["GetContext"],
            cq.GetContextRequest(context_id="fz").SerializeToString(),
            5.0,
        )
        is None
    )
    for name in ("publisher", "query"):
        assert everything.services.alive(name), everything.services.log(name)[-3000:]
    assert everything.http.get("/healthz").status_code == 200
