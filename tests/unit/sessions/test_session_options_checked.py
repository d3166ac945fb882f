"""The emitter's own options are checked when the session is made, naming the option,
with nothing recorded. ``validation='bogus'`` said "'bogus' is not a valid Validation";
``max_pending`` 0 or below made the bounded queue unbounded (asyncio.Queue(0));
``max_batch`` 0 was taken; a ``source`` the observer refuses (past 256 characters, a
line break) was recorded on the ledger and failed the session's start through the
observer, naming ``events[0].source``."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from jetsource._gen.process.v1 import events_pb2
from jetsource.domains.sessions.emit import Session


class _Writer:
    def __init__(self) -> None:
        self.recorded: list[events_pb2.CanonicalEvent] = []

    async def record(
        self, events: Sequence[events_pb2.CanonicalEvent]
    ) -> list[events_pb2.Position]:
        self.recorded += events
        return [events_pb2.Position() for _ in events]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"validation": "bogus"}, "validation: 'bogus' is not one of off, warn, strict"),
        ({"max_pending": 0}, "max_pending: 0 must be an integer >= 1"),
        ({"max_pending": -3}, "max_pending: -3 must be an integer >= 1"),
        ({"max_pending": 2.5}, "max_pending: 2.5 must be an integer >= 1"),
        ({"max_batch": 0}, "max_batch: 0 must be an integer >= 1"),
        ({"max_batch": 0.0}, "max_batch: 0.0 must be an integer >= 1"),
        ({"max_pending": float("nan")}, "max_pending: nan must be an integer >= 1"),
        ({"max_pending": float("inf")}, "max_pending: inf must be an integer >= 1"),
        ({"max_batch": True}, "max_batch: True must be an integer >= 1"),
        ({"source": "s" * 300}, "source is 300 characters; at most 256"),
        ({"source": "bad\nsource"}, "source contains a control character (U+000A at position 3)"),
    ],
)
async def test_a_bad_option_is_refused_naming_it_and_nothing_is_recorded(
    options: dict[str, object], said: str
) -> None:
    writer = _Writer()
    with pytest.raises(ValueError) as info:
        s = Session(writer, "probe", **options)  # type: ignore[arg-type]
        await s.__aenter__()
    assert said in str(info.value), str(info.value)
    assert writer.recorded == []


async def test_good_options_still_record() -> None:
    writer = _Writer()
    s = Session(writer, "probe", validation="strict", max_pending=1, max_batch=1, source="a.b")
    await s.__aenter__()
    s.emit("custom_note", {"n": 1})
    await s.close()
    assert [e.source for e in writer.recorded] == ["a.b"] * 3


async def test_whole_number_floats_are_taken_as_before() -> None:
    """max_pending=1e4, max_batch=2.0 (a config file's number, a division) worked before
    the options were checked (fb75049 refused them): taken, as ints."""
    writer = _Writer()
    s = Session(writer, "probe", max_pending=1e4, max_batch=2.0)  # type: ignore[arg-type]
    assert (s._queue.maxsize, s._max_batch) == (10_000, 2)
    assert isinstance(s._max_batch, int)
    await s.__aenter__()
    for n in range(3):
        s.emit("custom_note", {"n": n})
    await s.close()
    assert len(writer.recorded) == 5  # started, three notes, ended
