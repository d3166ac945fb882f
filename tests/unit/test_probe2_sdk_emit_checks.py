"""The SDK's emit() refuses values a Struct cannot carry at the call, naming the field
(it raised protobuf's bare "Unexpected type" / "bad argument type"), and an event
emitted after close() is dropped and counted at once (it was held in a buffer nothing
would ever send, and counted nowhere)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
from typing import Any

import pytest

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource.sdk import Observer, observe


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"at": datetime.datetime(2026, 1, 1)}, "data['at']"),
        ({"a": {"b": [1, {2, 3}]}}, "data['a']['b'][1]"),
        ({"blob": b"x"}, "data['blob']"),
        ({"a": object()}, "data['a']"),
        ({1: "x"}, "key 1"),
    ],
)
async def test_an_unsendable_data_value_is_a_type_error_naming_it(
    data: dict[Any, Any], named: str
) -> None:
    observer = Observer("127.0.0.1:1")
    p = observer.process("job")
    with pytest.raises(TypeError) as raised:
        p.emit("step", data)
    assert named in str(raised.value)
    assert observer.stats.emitted == 0 and not observer._buffer  # nothing queued


async def test_attributes_are_checked_at_the_call() -> None:
    observer = Observer("127.0.0.1:1")
    p = observer.process("job")
    with pytest.raises(TypeError, match=r"attributes\['retries'\]"):
        p.emit("step", {"ok": 1}, attributes={"retries": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"attributes\['since'\]"):
        observer.process("job", attributes={"since": datetime.date(2026, 1, 1)})
    # JSON values pass, nested too
    p.emit("step", {"a": [1, 2.5, None, True, {"b": "c"}], "t": (1, 2)}, attributes={"k": "v"})
    assert observer.stats.emitted == 1


async def test_an_emit_after_close_is_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = Observer("127.0.0.1:1", close_timeout_s=0.2)
    async with observer:
        pass
    caplog.set_level(logging.WARNING, logger="jetsource.sdk")
    async with observer.process("late") as p:
        p.emit("step")
    assert observer.stats.emitted == 3
    assert observer.stats.dropped == 3
    assert not observer._buffer, "nothing held for a send that never comes"
    assert sum("is closed" in r.getMessage() for r in caplog.records) == 1
    await observer.close()  # closing again is a no-op
    # started again: emits queue (and would be sent) as before
    await observer.start()
    observer.process("again").emit("step")
    assert len(observer._buffer) == 1 and observer.stats.dropped == 3
    observer.close_timeout_s = 0.1
    await observer.close()


@pytest.mark.parametrize(
    ("value", "said"),
    [(2**53 + 1, "beyond 2^53"), (-(2**60), "beyond 2^53"), (float("nan"), "not a JSON number")],
)
async def test_a_number_the_struct_would_change_is_refused_at_the_call(
    value: float, said: str
) -> None:
    """A Struct's numbers are doubles: 2^53 + 1 was recorded as 2^53, NaN was refused
    by the observer later, in the background flush (stats.refused), not at the call."""
    observer = Observer("127.0.0.1:1")
    p = observer.process("job")
    with pytest.raises(ValueError, match=rf"data\[.n.\]\[0\]: .*{re.escape(said)}"):
        p.emit("step", {"n": [value]})
    p.emit("step", {"n": [2**53, 1.5, True]})
    assert observer.stats.emitted == 1


def test_a_loop_ending_without_close_counts_and_says_what_was_not_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Never closed (no ``async with observer``), the events still queued when
    asyncio.run returned were lost silently: stats.dropped 0, no warning."""
    observer = Observer("127.0.0.1:1")

    async def main() -> None:
        async with observer.process("job") as p:
            p.emit("step")

    caplog.set_level(logging.WARNING, logger="jetsource.sdk")
    asyncio.run(main())
    assert observer.stats.emitted == 3
    assert observer.stats.dropped == 3
    assert any("was not closed" in r.getMessage() for r in caplog.records)


class Recording:
    """An observer stub that records every batch."""

    def __init__(self, _channel: Any) -> None:
        self.batches: list[Any] = []

    async def RecordBatch(self, request: Any, **_: Any) -> Any:
        self.batches.append(request)
        return pb.RecordBatchResponse(positions=[epb.Position() for _ in request.events])


def test_an_observer_closed_in_one_loop_starts_again_in_the_next() -> None:
    """The second asyncio.run failed: "<asyncio.locks.Event ...> is bound to a
    different event loop" (the flush's events were made once, for the first loop)."""
    observer = Observer("127.0.0.1:1", close_timeout_s=0.2)  # nothing there: close waits

    async def main() -> None:
        async with observer, observer.process("job") as p:
            p.emit("step")

    asyncio.run(main())
    asyncio.run(main())
    assert observer.stats.emitted == 6 and observer.stats.dropped == 6


async def test_flush_sends_what_was_emitted_before_any_loop_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Emitted from a thread with no event loop (the observer not started), then
    ``await observer.flush()``: it waited forever, nothing being there to send."""
    monkeypatch.setattr(observe, "pb_grpc", type("S", (), {"ObserverServiceStub": Recording}))
    observer = Observer("127.0.0.1:1")
    t = threading.Thread(target=lambda: observer.process("job").emit("step"))
    t.start()
    t.join()
    await asyncio.wait_for(observer.flush(), 5)
    assert observer.stats.sent == 1
    await observer.close()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"flush_interval_s": 0}, "flush_interval_s"),  # spun the idle flush: a core busy
        ({"call_timeout_s": 0}, "call_timeout_s"),  # every send failed, resent forever
        ({"max_backoff_s": -1}, "max_backoff_s"),
        ({"flush_interval_s": float("nan")}, "flush_interval_s"),
        ({"close_timeout_s": -1}, "close_timeout_s"),
        ({"target": ""}, "target"),
    ],
)
def test_an_option_that_cannot_work_is_refused_naming_it(
    kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        Observer(**kwargs)
    Observer(close_timeout_s=0)  # 0: do not wait at close


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ({"process_id": "bad id!"}, "event.process_id"),
        ({"kind": "a\nb"}, "event.data.kind"),
        ({"kind": "k" * 200}, "event.data.kind"),
        ({"causation_id": "no spaces"}, "event.causation_id"),
        ({"correlation_id": "a\rb"}, "event.correlation_id"),
        ({"idempotency_key": "k" * 300}, "event.idempotency_key"),
        ({"attributes": {"": "v"}}, "event.attributes"),
        ({"attributes": {"k": "v\x00"}}, "event.attributes['k']"),
    ],
)
async def test_what_the_observer_would_refuse_is_refused_at_the_call(
    call: dict[str, Any], named: str
) -> None:
    """These were queued and refused by the observer later, in the background flush
    (stats.refused and a log line; a bad process id or kind lost every event of the
    process), never at the call."""
    observer = Observer("127.0.0.1:1")
    process_kwargs = {k: v for k, v in call.items() if k in ("process_id", "kind")}
    with pytest.raises(ValueError, match=re.escape(named)):
        p = observer.process("job", **process_kwargs)
        p.emit("step", **{k: v for k, v in call.items() if k not in process_kwargs})
    assert not observer._buffer


async def test_a_source_the_observer_would_refuse_is_refused_at_process() -> None:
    with pytest.raises(ValueError, match=r"event\.source"):
        Observer("127.0.0.1:1", source="a\nb").process("job")
    observer = Observer("127.0.0.1:1", source="trainer")
    p = observer.process("job", kind="stage", process_id="")  # "": a fresh id, as before
    p.emit("step", causation_id=p.process_id, correlation_id="c-1", attributes={"a": "b"})
    assert len(p.process_id) == 36 and observer.stats.emitted == 1


def test_a_mapping_a_struct_cannot_hold_is_refused_naming_it() -> None:
    """Any mapping at the top of ``data``; below it only dicts: a Struct refuses other
    mappings with a bare "Unexpected type" (the SDK checked any Mapping as fine)."""
    from types import MappingProxyType

    observer = Observer("127.0.0.1:1")
    p = observer.process("job")
    p.emit("step", MappingProxyType({"n": 1}))
    with pytest.raises(TypeError, match=r"data\['m'\]: a mappingproxy cannot be sent"):
        p.emit("step", {"m": MappingProxyType({"n": 1})})
    assert observer.stats.emitted == 1
