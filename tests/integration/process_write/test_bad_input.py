"""The bad-input sweep: each malformed canonical event is INVALID_ARGUMENT naming its
field (in the message and in the BadRequest details), and nothing is appended or
claimed, even for the good events of the same request."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.domains.process.claims import claim_key
from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import event, last_seq

pytestmark = pytest.mark.integration


def _with(
    *,
    occurred_at: tuple[int, int] | None = None,
    attributes: dict[str, str] | None = None,
    typed: epb.TypedPayload | None = None,
    data: dict[str, Any] | None = None,
    **fields: str,
) -> epb.CanonicalEvent:
    """A good event with the given fields changed (one per case)."""
    e = event("bad-input", "step", event_id=f"good-{uuid.uuid4().hex[:8]}")
    if occurred_at is not None:
        e.occurred_at.seconds, e.occurred_at.nanos = occurred_at
    if attributes is not None:
        e.attributes.update(attributes)
    if typed is not None:
        e.typed.CopyFrom(typed)
    if data is not None:
        e.data.update(data)
    for name, value in fields.items():
        setattr(e, name, value)
    return e


BAD = {
    "empty process id": (_with(process_id=""), "process_id"),
    "process id with a dot": (_with(process_id="a.b"), "process_id"),
    "process id with a wildcard": (_with(process_id="a*"), "process_id"),
    "process id with a space": (_with(process_id="a b"), "process_id"),
    "process id too long": (_with(process_id="p" * 129), "process_id"),
    "parent id with a dot": (_with(parent_process_id="x.y"), "parent_process_id"),
    "parent is itself": (_with(parent_process_id="bad-input"), "parent_process_id"),
    "event id with a space": (_with(event_id="has space"), "event_id"),
    "event id too long": (_with(event_id="e" * 129), "event_id"),
    "causation id with a newline": (_with(causation_id="a\nb"), "causation_id"),
    "missing event type": (_with(event_type=""), "event_type"),
    "CamelCase event type": (_with(event_type="StepDone"), "event_type"),
    "event type with a dot": (_with(event_type="step.done"), "event_type"),
    "event type with a wildcard": (_with(event_type="step_>"), "event_type"),
    "event type too long": (_with(event_type="s" * 65), "event_type"),
    "nanos out of range": (_with(occurred_at=(1_700_000_000, 1_000_000_000)), "occurred_at"),
    "negative nanos": (_with(occurred_at=(1_700_000_000, -1)), "occurred_at"),
    "year 10000": (_with(occurred_at=(253_402_300_800, 0)), "occurred_at"),
    "before 1970": (_with(occurred_at=(-5, 0)), "occurred_at"),
    "huge data payload": (_with(data={"blob": "x" * 70_000}), "data"),
    "huge typed payload": (
        _with(typed=epb.TypedPayload(content_type="application/octet-stream", data=b"x" * 70_000)),
        "typed",
    ),
    "typed without a content type": (
        _with(typed=epb.TypedPayload(data=b"x")),
        "typed.content_type",
    ),
    "source with control characters": (_with(source="a\x00b"), "source"),
    "the zero time": (_with(occurred_at=(0, 0)), "occurred_at"),
    "source with a C1 control": (_with(source="a\x85b"), "source"),
    "source with a CSI": (_with(source="a\x9b2J"), "source"),
    "correlation id with a line separator": (_with(correlation_id="a\u2028b"), "correlation_id"),
    "idempotency key with a paragraph separator": (
        _with(idempotency_key="k\u2029"),
        "idempotency_key",
    ),
    "attribute value with a C1 control": (_with(attributes={"k": "v\x9b"}), "attributes['k']"),
    "attribute key with a C1 control": (
        _with(attributes={"k\x85": "v"}),
        "attributes['k\\x85']",  # the key's repr
    ),
    "content type with a C1 control": (
        _with(typed=epb.TypedPayload(content_type="text/\x85", data=b"x")),
        "typed.content_type",
    ),
    "a kind longer than ListProcesses takes": (
        _with(event_type="process_started", data={"kind": "k" * 129}),
        "data.kind",
    ),
    "a kind with a C1 control": (
        _with(event_type="process_started", data={"kind": "a\x85"}),
        "data.kind",
    ),
    "idempotency key too long": (_with(idempotency_key="k" * 257), "idempotency_key"),
    "too many attributes": (_with(attributes={f"k{i}": "v" for i in range(65)}), "attributes"),
    "empty attribute key": (_with(attributes={"": "v"}), "attributes"),
}


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return [v.field for v in bad.field_violations]
    return []


@pytest.mark.parametrize("case", sorted(BAD))
async def test_a_malformed_event_is_refused_naming_its_field_and_nothing_is_appended(
    observer: Observer, stub: pb_grpc.ObserverServiceStub, case: str
) -> None:
    bad, field = BAD[case]
    good = event(f"good-{uuid.uuid4().hex[:8]}", "step", event_id="sweep-good")
    before = await last_seq(observer.store)
    for call in ("Record", "RecordBatch"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if call == "Record":
                await stub.Record(pb.RecordRequest(event=bad))
            else:
                await stub.RecordBatch(pb.RecordBatchRequest(events=[good, bad]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        path = ("event." if call == "Record" else "events[1].") + field
        assert path in (info.value.details() or ""), (case, info.value.details())
        assert violations(info.value) == [path], case
    assert await last_seq(observer.store) == before
    # the good event of the refused batch was not claimed either
    assert (
        await observer.recorder._claims.get(claim_key("e", good.process_id, "sweep-good")) is None
    )


async def test_an_empty_request_and_a_missing_event_are_refused(
    stub: pb_grpc.ObserverServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Record(pb.RecordRequest())
    assert (info.value.code(), violations(info.value)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["event"],
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordBatch(pb.RecordBatchRequest())
    assert (info.value.code(), violations(info.value)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["events"],
    )


async def test_bytes_that_are_not_a_request_are_invalid_argument(observer: Observer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}") as channel:
        call = channel.unary_unary("/jetsource.process.v1.ObserverService/Record")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\xff\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
