"""One check of whether a snapshot is of its aggregate's history, for readers and the
archiver alike (jetsource.eventstore.snapshots.not_its_history): the archiver's
_not_its_history and the loader's _check repeated the same one-event read."""

from __future__ import annotations

import pytest

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.archive import archiver
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError
from jetsource.eventstore import snapshots
from jetsource.eventstore.horizon import BeyondHorizonError, Horizon
from jetsource.projection import history


def _snapshot(version: int = 3, seq: int = 30, recorded: int = 300) -> snapshots.Snapshot:
    return snapshots.Snapshot("Ctx", "a", version, seq, recorded, 1, "json", b"{}")


def _event(version: int, seq: int, recorded: int) -> RecordedEvent:
    envelope = EventEnvelope(aggregate_id="a", aggregate_version=version)
    return RecordedEvent(envelope, None, seq, recorded)  # type: ignore[arg-type]


class _Store:
    """Answers one read with ``answer`` (a list, or an exception to raise)."""

    def __init__(self, answer: list[RecordedEvent] | Exception) -> None:
        self.answer = answer
        self.reads: list[tuple[object, ...]] = []

    async def read_aggregate(self, aggregate_id: str, **bounds: int) -> list[RecordedEvent]:
        self.reads.append((aggregate_id, *(bounds[k] for k in sorted(bounds))))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ([_event(3, 30, 300)], None),
        ([], "the event stream holds no v3 of it at stream sequence 30"),
        ([_event(2, 30, 300)], "the event stream holds no v3 of it at stream sequence 30"),
        ([_event(3, 31, 300)], "the event stream holds no v3 of it at stream sequence 30"),
        ([_event(3, 30, 301)], "its recorded time 300 is not its event's (301)"),
        (BeyondHorizonError("a", Horizon(5, 50, 500)), None),
        (
            CorruptEventError("a", 30, "bad"),
            f"the event at its stream sequence does not read: {CorruptEventError('a', 30, 'bad')}",
        ),
    ],
    ids=["its-event", "none", "other-version", "other-seq", "other-time", "purged", "corrupt"],
)
async def test_one_read_of_its_event_says_whether_a_snapshot_is_of_its_history(
    answer: list[RecordedEvent] | Exception, why: str | None
) -> None:
    store = _Store(answer)
    assert await snapshots.not_its_history(store, _snapshot()) == why  # type: ignore[arg-type]
    assert store.reads == [("a", 30, 3, 30, 3)]  # from_seq, from_version, to_seq, to_version


def test_the_archiver_and_the_loader_share_the_one_check() -> None:
    assert getattr(archiver, "not_its_history", None) is snapshots.not_its_history
    assert getattr(history, "not_its_history", None) is snapshots.not_its_history
    assert getattr(history, "not_taken_at", None) is snapshots.not_taken_at
    assert not hasattr(archiver.Archiver, "_not_its_history")
