"""Pruning keeps the read models deterministic when causation crosses trees.

A surviving process caused by an event of a pruned tree: applied live (the tree's
events, then the pruner's tombstone) every process model must equal a rebuild from
the purged stream (no events of the tree, the tombstone), the graph included (its
CAUSED_BY edge into the pruned tree turns back into the AWAITS a rebuild makes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.codec import UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.pruning import PRUNER_ID, tombstone
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from tests.integration.process_read.ledger import process_domain
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(
        projector_settings(settings, unique), domains=DomainRegistry([process_domain(unique)])
    )
    yield p
    for name in p.model_names():
        for version in (1, 2):
            await p.model(name, version).drop()
    await p.close()


def _event(seq: int, pid: str, version: int, event_id: str, parent: str = "", cause: str = ""):  # type: ignore[no-untyped-def]
    env = EventEnvelope(
        event_id=event_id,
        event_type="step_done",
        aggregate_id=pid,
        aggregate_version=version,
        parent_aggregate_id=parent,
        causation_id=cause,
        payload=b"",
    )
    return RecordedEvent(env, UnknownEvent("step_done", 1, b""), seq, seq)


def _histories() -> tuple[list[RecordedEvent], list[RecordedEvent]]:
    """(live, purged): the same stream before and after the pruner purged the tree of
    'old' (old and its child 'kid'); 'keep' was caused by an event of each."""
    rows = [
        _event(1, "old", 1, "o1"),
        _event(2, "kid", 1, "k1", parent="old"),
        _event(3, "keep", 1, "s1", cause="o1"),
        _event(4, "keep", 2, "s2", cause="k1"),
        _event(5, "other", 1, "x1", cause="s2"),
    ]
    stone = tombstone("old", ["old", "kid"])
    env = EventEnvelope(
        event_id="t1",
        event_type=stone.event_type,
        aggregate_id=PRUNER_ID,
        aggregate_version=1,
        payload=stone.event.SerializeToString(),
    )
    rows.append(RecordedEvent(env, stone.event, 6, 6))
    rows.append(_event(7, "keep", 3, "s3", cause="k1"))  # after the prune
    purged = [r for r in rows if r.envelope.aggregate_id not in ("old", "kid")]
    return rows, purged


async def test_a_prune_with_causation_across_trees_equals_a_rebuild(
    projection: Projection,
) -> None:
    live_rows, purged_rows = _histories()
    for name in projection.model_names():
        live, fresh = projection.model(name, 1), projection.model(name, 2)
        await live.setup()
        await fresh.setup()
        for row in live_rows:  # one by one, as the projector may deliver them
            outcome = await live.apply([row])
            assert not outcome.failed, (name, outcome)
        outcome = await fresh.apply(purged_rows)
        assert not outcome.failed, (name, outcome)
        assert await live.digest() == await fresh.digest(), name
