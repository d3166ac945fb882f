"""The observer's events counter for a batch stored only in part: each process's events
of a request are one atomic group, not the whole request, so one process's append
failing leaves the others' stored. They were counted with the failure (two
``unavailable``, none ``recorded``, below), while a retry found them stored
(duplicates): the counter said a write stored nothing that had stored half."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.domains.process.events import registry
from jetsource.domains.process.recorder import Recorder, RecorderOptions
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.observer.server import ObserverService
from tests.unit.test_observer_deadline_outcome import Health
from tests.unit.test_recorder_dup_claims_nothing import DictClaims


def count(outcome: str) -> float:
    return REGISTRY.get_sample_value("jetsource_observer_events_total", {"outcome": outcome}) or 0.0


class OneProcessDown(InMemoryEventStore):
    """Appends of process ``down`` fail (its stream's leader away); the rest are stored."""

    async def append(self, aggregate_id: str, *args: Any, **kwargs: Any) -> Any:
        if aggregate_id == "down":
            raise EventStoreUnavailableError("no answer for process down")
        return await super().append(aggregate_id, *args, **kwargs)


def ev(process_id: str, event_id: str) -> CanonicalEvent:
    return CanonicalEvent(process_id=process_id, event_type="step", event_id=event_id)


OUTCOMES = ("recorded", "duplicate", "unavailable")


async def test_a_batch_stored_in_part_counts_each_event_by_its_own_outcome() -> None:
    store = OneProcessDown(registry)
    rec = Recorder(store, DictClaims(), RecorderOptions())
    service = ObserverService(rec, Health(), 100)  # type: ignore[arg-type]
    await rec.record([ev("up", "old")])
    before = {o: count(o) for o in OUTCOMES}
    batch = [ev("up", "old"), ev("up", "a"), ev("up", "a"), ev("down", "b")]
    with pytest.raises(EventStoreUnavailableError):
        await service._record("RecordBatch", batch, "events")
    await rec.flush()
    assert [r.event_id for r in await store.read_aggregate("up")] == ["old", "a"]
    # old: stored before; a: stored, then repeated in the batch; b: not stored.
    # Before: unavailable +4, recorded +0, duplicate +0.
    assert {o: count(o) - before[o] for o in OUTCOMES} == {
        "recorded": 1,
        "duplicate": 2,
        "unavailable": 1,
    }


async def test_a_batch_stored_whole_or_not_at_all_is_counted_as_before() -> None:
    store = OneProcessDown(registry)
    rec = Recorder(store, DictClaims(), RecorderOptions())
    service = ObserverService(rec, Health(), 100)  # type: ignore[arg-type]
    before = {o: count(o) for o in OUTCOMES}
    await service._record("RecordBatch", [ev("up", "x"), ev("up", "x")], "events")
    with pytest.raises(EventStoreUnavailableError):
        await service._record("RecordBatch", [ev("down", "y"), ev("down", "z")], "events")
    await rec.flush()
    assert {o: count(o) - before[o] for o in OUTCOMES} == {
        "recorded": 1,
        "duplicate": 1,
        "unavailable": 2,
    }
