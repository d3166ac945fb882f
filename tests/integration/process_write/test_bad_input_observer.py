"""Hostile input to ObserverService beyond the field sweep of test_bad_input.py: numbers
JSON cannot hold in the Struct payload, deep nesting, the same event id twice in one
request with different content, and client streams that break half-way. Whatever
comes: a defined status naming the field (never UNKNOWN or INTERNAL, never a hang),
and a refused request appends nothing."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import event, last_seq
from tests.integration.process_write.test_bad_input import violations

pytestmark = pytest.mark.integration
Code = grpc.StatusCode


def _pid() -> str:
    return f"bi-{uuid.uuid4().hex[:10]}"


def _number(value: float, path: tuple[str, ...] = ("x",)) -> epb.CanonicalEvent:
    e = event(_pid(), data=None)
    s = e.data
    for key in path[:-1]:
        s = s.fields[key].struct_value
    s.fields[path[-1]].number_value = value
    return e


def _in_list(value: float) -> epb.CanonicalEvent:
    e = event(_pid(), data=None)
    e.data.fields["xs"].list_value.values.add(number_value=1)
    e.data.fields["xs"].list_value.values.add(number_value=value)
    return e


def _deep(depth: int) -> epb.CanonicalEvent:
    e = event(_pid(), data=None)
    s: struct_pb2.Struct = e.data
    for _ in range(depth):
        s = s.fields["d"].struct_value
    s.fields["leaf"].string_value = "x"
    return e


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


NOT_JSON = {
    "NaN": (_number(math.nan), "data.x"),
    "infinity": (_number(math.inf), "data.x"),
    "minus infinity, nested": (_number(-math.inf, ("a", "b")), "data.a.b"),
    "NaN in a list": (_in_list(math.nan), "data.xs[1]"),
    "nested 25 deep": (_deep(25), "data" + ".d" * 20),
}


@pytest.mark.parametrize("case", sorted(NOT_JSON))
async def test_payloads_json_cannot_hold_are_refused_naming_the_path(
    observer: Observer, stub: pb_grpc.ObserverServiceStub, case: str
) -> None:
    """A NaN or an infinity is no JSON number: stored, it would break every reader
    that renders the payload as JSON (the query service, the CLI, the projector)."""
    bad, field = NOT_JSON[case]
    before = await last_seq(observer.store)
    for call in ("Record", "RecordBatch"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if call == "Record":
                await stub.Record(pb.RecordRequest(event=bad))
            else:
                await stub.RecordBatch(pb.RecordBatchRequest(events=[event(_pid()), bad]))
        path = ("event." if call == "Record" else "events[1].") + field
        assert info.value.code() == Code.INVALID_ARGUMENT, (case, info.value.details())
        assert path in (info.value.details() or ""), (case, info.value.details())
        assert violations(info.value) == [path], case
    assert await last_seq(observer.store) == before


async def test_ordinary_numbers_and_moderate_nesting_are_recorded(
    stub: pb_grpc.ObserverServiceStub,
) -> None:
    for e in (_number(1e308), _number(-0.0), _deep(18), _in_list(2.5)):
        await stub.Record(pb.RecordRequest(event=e))


async def test_nesting_past_the_parser_limit_is_invalid_argument(observer: Observer) -> None:
    """Deeper than protobuf parses: the body is refused as not a request."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}") as channel:
        call = channel.unary_unary("/jetsource.process.v1.ObserverService/Record")
        event_bytes = _deep(200).SerializeToString()
        body = b"\x0a" + _varint(len(event_bytes)) + event_bytes  # RecordRequest.event
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(body, timeout=10)
    assert info.value.code() == Code.INVALID_ARGUMENT


async def test_a_repeated_event_id_with_other_content_in_one_request(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    pid = _pid()
    first = event(pid, event_id="twice", data={"n": 1})
    same = event(pid, event_id="twice", data={"n": 1})
    answer = await stub.RecordBatch(pb.RecordBatchRequest(events=[first, same]))
    assert [p.duplicate for p in answer.positions] == [False, True]
    assert answer.positions[0].global_seq == answer.positions[1].global_seq


async def test_the_same_event_id_in_two_processes_records_both(
    stub: pb_grpc.ObserverServiceStub,
) -> None:
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    pid_b = _pid()
    a = await stub.Record(pb.RecordRequest(event=event(_pid(), event_id=shared)))
    b = await stub.Record(pb.RecordRequest(event=event(pid_b, event_id=shared)))
    assert not a.position.duplicate and not b.position.duplicate
    assert a.position.global_seq != b.position.global_seq
    # Each is still deduplicated within its own process.
    again = await stub.Record(pb.RecordRequest(event=event(pid_b, event_id=shared)))
    assert again.position.duplicate and again.position.global_seq == b.position.global_seq


async def _raw_stream(
    observer: Observer, bodies: list[bytes], pause_after: int | None = None
) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}") as channel:
        call = channel.stream_unary("/jetsource.process.v1.ObserverService/RecordStream")

        async def requests() -> AsyncIterator[bytes]:
            for i, b in enumerate(bodies):
                if pause_after is not None and i == pause_after:
                    await asyncio.sleep(0.2)
                yield b

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(requests(), timeout=10)
    return info.value


async def test_a_stream_whose_message_is_not_protobuf_ends_invalid_argument_at_once(
    observer: Observer,
) -> None:
    """Not DEADLINE_EXCEEDED after the client's deadline: the handler must not wait
    for events its reader will never hand over."""
    good = pb.RecordStreamRequest(event=event(_pid(), event_id=_pid())).SerializeToString()
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = await _raw_stream(observer, [good, b"\xff\xff\xff\xff"], pause_after=1)
    assert error.code() == Code.INVALID_ARGUMENT, (error.code(), error.details())
    assert "request body" in (error.details() or "")
    assert loop.time() - started < 5


async def test_a_stream_the_client_cancels_half_way_leaves_the_server_serving(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    pid = _pid()
    gate = asyncio.Event()

    async def requests() -> AsyncIterator[pb.RecordStreamRequest]:
        yield pb.RecordStreamRequest(event=event(pid, event_id="c-1"))
        await gate.wait()
        yield pb.RecordStreamRequest(event=event(pid, event_id="c-2"))

    call = stub.RecordStream(requests())
    await asyncio.sleep(0.3)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # the service still answers, and the first event is there exactly once
    again = await stub.Record(pb.RecordRequest(event=event(pid, event_id="c-1")))
    assert again.position.duplicate and again.position.process_seq == 1


async def test_a_bad_event_in_a_stream_names_its_arrival_index(
    stub: pb_grpc.ObserverServiceStub,
) -> None:
    pid = _pid()

    async def requests() -> AsyncIterator[pb.RecordStreamRequest]:
        yield pb.RecordStreamRequest(event=event(pid))
        yield pb.RecordStreamRequest(event=event(pid))
        yield pb.RecordStreamRequest(event=_number(math.nan))

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordStream(requests(), timeout=10)
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert "events[2].data.x" in (info.value.details() or ""), info.value.details()


async def test_a_stream_of_an_event_without_its_event_field(
    stub: pb_grpc.ObserverServiceStub,
) -> None:
    async def requests() -> AsyncIterator[pb.RecordStreamRequest]:
        yield pb.RecordStreamRequest()

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordStream(requests(), timeout=10)
    assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
    assert "events[0]" in (info.value.details() or ""), info.value.details()


async def test_an_empty_stream_records_nothing(stub: pb_grpc.ObserverServiceStub) -> None:
    async def requests() -> AsyncIterator[pb.RecordStreamRequest]:
        return
        yield

    answer = await stub.RecordStream(requests(), timeout=10)
    assert list(answer.positions) == []


async def test_a_message_over_the_grpc_limit_is_resource_exhausted_and_appends_nothing(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    before = await last_seq(observer.store)
    huge = event(_pid(), data={"blob": "x" * (5 * 1024 * 1024)})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordBatch(pb.RecordBatchRequest(events=[event(_pid()), huge]), timeout=10)
    assert info.value.code() == Code.RESOURCE_EXHAUSTED, info.value.details()
    assert await last_seq(observer.store) == before


async def test_more_events_than_a_batch_takes_are_refused_naming_events(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    before = await last_seq(observer.store)
    many = [event(_pid(), data=None) for _ in range(10_001)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordBatch(pb.RecordBatchRequest(events=many), timeout=10)
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert violations(info.value) == ["events"]
    assert await last_seq(observer.store) == before


@pytest.mark.parametrize("pause", [False, True], ids=["all-at-once", "after-a-pause"])
async def test_a_refused_event_in_a_stream_keeps_every_event_before_it(
    observer: Observer, stub: pb_grpc.ObserverServiceStub, pause: bool
) -> None:
    """Events 0-4 good, 5 refused, 6-8 good: 0-4 are recorded (they were recorded only
    up to the last flush, and all at once none but the first), 6-8 are not read."""
    pid = _pid()
    ids = [f"s-{i}" for i in range(9)]
    events = [event(pid, event_id=ids[i], data={"i": i}) for i in range(9)]
    events[5].event_type = "NotSnakeCase"

    async def requests() -> AsyncIterator[pb.RecordStreamRequest]:
        for i, e in enumerate(events):
            if pause and i == 5:
                await asyncio.sleep(0.2)
            yield pb.RecordStreamRequest(event=e)

    for _ in range(3):  # the same every time (it depended on when the flushes ran)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RecordStream(requests(), timeout=10)
        assert info.value.code() == Code.INVALID_ARGUMENT
        assert "events[5].event_type" in (info.value.details() or "")
        stored = await observer.store.read_aggregate(pid)
        assert [r.event_id for r in stored] == ids[:5]
    # Nothing after the refused one was claimed: sent again, it is recorded.
    rest = await stub.RecordBatch(pb.RecordBatchRequest(events=events[6:]))
    assert [p.duplicate for p in rest.positions] == [False] * 3
    assert [p.process_seq for p in rest.positions] == [6, 7, 8]
