"""An idempotency key of spaces alone is no key. Sent so (a template's blank, a padded
empty value), it was taken as a key like any other: the process's first such event was
recorded, and every later one, whatever it said, was answered as its duplicate, nothing
recorded (the key holds for ever). Empty still means no key; a key of spaces alone, or
other blanks (tab is a control character, refused already; NBSP, U+3000; what
printable.blank calls empty: a zero-width space, a Hangul filler, a BOM, a word joiner), is
INVALID_ARGUMENT naming ``event.idempotency_key``, nothing appended or claimed, as the
context publisher refuses ``options.idempotency_key`` of spaces alone."""

from __future__ import annotations

import uuid

import grpc
import pytest

from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.client import error_details
from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import event, history, last_seq

pytestmark = pytest.mark.integration


# Blank is printable.blank, the repo's one rule of empty: a zero-width space, a Hangul
# filler, a BOM, a word joiner show nothing as a space does (strip() kept them).
@pytest.mark.parametrize(
    "key",
    [" ", "   ", "\u00a0", "\u3000 ", "\u200b", "\u3164", "\ufeff", "\u2060", " \u200b\u00a0"],
    ids=repr,
)
async def test_a_blank_idempotency_key_is_refused_naming_it(
    observer: Observer, stub: pb_grpc.ObserverServiceStub, key: str
) -> None:
    process = f"blank-key-{uuid.uuid4().hex[:8]}"
    before = await last_seq(observer.store)
    for n, step in enumerate(("first_step", "second_step")):
        e = event(process, step, event_id=f"blank-{n}", idempotency_key=key)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Record(pb.RecordRequest(event=e), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert list(error_details(err.value).fields) == ["event.idempotency_key"]
        assert "blank" in (err.value.details() or "")
    assert await last_seq(observer.store) == before
    # Without a key, both are recorded.
    for n, step in enumerate(("first_step", "second_step")):
        e = event(process, step, event_id=f"blank-{n}")
        answer = await stub.Record(pb.RecordRequest(event=e), timeout=10)
        assert not answer.position.duplicate
    assert [r.event_id for r in await history(observer.store, process)] == [
        "blank-0",
        "blank-1",
    ]
