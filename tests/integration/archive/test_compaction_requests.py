"""What compaction asks NATS for (real NATS and Valkey): whether an old message was
voided is known from the store's void watch, and asked of the server only for a
message that is not a valid event at its place. Asked for every message after an
aggregate's first, compaction made one request per old event (a million events, a
million round trips)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import void_prefix
from jetsource.projection.bootstrap import Projection
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at, story_with_a_voided_forgery

pytestmark = pytest.mark.integration


def count_void_lookups(monkeypatch: pytest.MonkeyPatch, prefix: str) -> list[str]:
    asked: list[str] = []
    real: Callable[..., Any] = jsapi.last_for_subject

    async def counting(replies: Any, stream: str, subject: str, *args: Any) -> Any:
        if subject.startswith(prefix):
            asked.append(subject)
        return await real(replies, stream, subject, *args)

    monkeypatch.setattr(jsapi, "last_for_subject", counting)
    return asked


async def test_compaction_asks_no_void_per_old_event(
    compacting: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = compacting
    store = p.store
    await store.append("s1", [NewEvent(ev.ContextCreated(title="T", created_by="x"))], 0)
    for i in range(1, 30):
        added = ev.DecisionAdded(decision_id=f"d{i}", author="bob", title="D")
        await store.append("s1", [NewEvent(added)], i)
    records = await store.read_aggregate("s1")
    await save_snapshots(p.snapshots, records, [25])
    asked = count_void_lookups(monkeypatch, void_prefix(store.settings.subject_prefix))

    report = (await compact_at(p, records[-1].recorded_at_ns)).report
    assert report.archived == 25, report
    assert asked == []  # was 24: one per archived event after the first


async def test_a_void_the_watch_missed_is_still_asked_for(
    compacting: Projection, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message that does not decode is asked about: voided, it holds no version."""
    p = compacting
    store = p.store
    voided = await story_with_a_voided_forgery(p, unique, last=13)
    records = await store.read_aggregate("s1")
    await save_snapshots(p.snapshots, records, [10])
    store._voids.discard(voided)  # as if the watch had not heard of it
    asked = count_void_lookups(monkeypatch, void_prefix(store.settings.subject_prefix))

    report = (await compact_at(p, records[-1].recorded_at_ns)).report
    assert report.purged == 11, report  # v1..10 and the voided message among them
    horizon = await store.horizon("s1")
    assert horizon is not None and horizon.version == 10
    assert len(asked) == 1, asked  # the voided message alone
