"""Events a newer release wrote (a rolling upgrade that upgraded the writers first, or a
rogue writer): a known type at a schema version past the newest this release knows, or a
type name of the domain this release does not know, on the domain's own subjects.

Every read model skipped them in silence before (its position moved past them, so the
model never held them, even after the upgrade). Now each model dead-letters such an
event once, naming the type, the version found and the newest one known, and saying
to upgrade then retry it; the other stories flow on; ``projector status`` counts it;
``dlq retry`` leaves it while this release still cannot read it, and applies it (with
what parked behind it) once the release knows the version: the live model then equals
a clean rebuild."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.envelope import NewEvent
from jetsource.domains.context.events import registry
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from tests.integration.test_poison import (  # noqa: F401 (the fixture)
    MODELS,
    projection,
    raw_publish,
    run_until_caught_up,
)
from tests.integration.test_poison_every_domain import (  # noqa: F401 (the fixture)
    omni,
    omni_history,
)
from tests.integration.test_poison_every_domain import raw_publish as publish_raw
from tests.projector_fixtures import seed

pytestmark = pytest.mark.integration


def future(aggregate_id: str, event_type: str, version: int, schema: int, payload: bytes) -> bytes:
    return EventEnvelope(
        event_id=f"{aggregate_id}-{version}-future",
        event_type=event_type,
        aggregate_type="context",
        aggregate_id=aggregate_id,
        aggregate_version=version,
        schema_version=schema,
        payload=payload,
    ).SerializeToString()


@pytest.fixture
def upgrade(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """What the upgrade brings: ``DecisionAdded`` v3 (the message of v2, lifted as it is)
    known to the registry the stores decode with, for this test only."""

    def apply() -> None:
        monkeypatch.setitem(registry._classes, ("DecisionAdded", 3), ev.DecisionAdded)
        monkeypatch.setitem(registry._current, "DecisionAdded", 3)
        monkeypatch.setitem(registry._upcasters, ("DecisionAdded", 2), lambda m: m)

    yield apply


async def test_a_newer_releases_event_is_dead_lettered_named_and_applied_after_the_upgrade(
    projection: Projection,  # noqa: F811
    upgrade: Callable[[], None],
) -> None:
    p = projection
    prefix = p.store.settings.subject_prefix
    await seed(p.store, ["ahead", "unknown", "other"], 3)
    newer = await raw_publish(
        p,
        f"{prefix}.ahead.DecisionAdded",
        future(
            "ahead",
            "DecisionAdded",
            4,
            3,
            ev.DecisionAdded(decision_id="d-new", title="from v3").SerializeToString(),
        ),
    )
    teleported = await raw_publish(
        p, f"{prefix}.unknown.Teleported", future("unknown", "Teleported", 4, 1, b"\x08\x01")
    )
    # The stories go on: behind the letter for its own story, as ever for the others.
    behind = await p.store.append(
        "ahead", [NewEvent(ev.DecisionAdded(decision_id="d-after", title="t"))], 4
    )
    await seed(p.store, ["after"], 3)

    reasons = {
        newer: "DecisionAdded v3 was written by a newer release: this release knows "
        "DecisionAdded up to v2; upgrade the projector to a release that knows it, then "
        "apply it to the model: `jetsource projector dlq retry --model {name}`",
        teleported: "Teleported v1 is an event type this release does not know (it knows "
        "no version of it): written by a newer release; upgrade",
        behind.stream_seqs[0]: f"parked behind dead letter of sequence {newer}",
    }
    for name in MODELS:
        worker = await run_until_caught_up(p, name)
        letters = {d.original_seq: d for d in await p.dead_letters.list(worker.spec)}
        assert set(letters) == set(reasons), (name, letters)
        for seq, reason in reasons.items():
            assert reason.format(name=name) in letters[seq].reason, (name, letters[seq].reason)
        assert worker.stats.dead_letters == 3, name
        assert worker.stats.unknown == 0, name  # none skipped in silence
        if name != "snapshots":  # it applies at snapshot versions only (every 100)
            assert await worker.model.position("after") == 3, name  # the others flow on
            assert await worker.model.position("other") == 3, name
    for name in MODELS:
        await p.control.ensure(name, 1)
    rows = {r["model"]: r for r in await admin.status(p) if r.get("version") == 1}
    for name in MODELS:
        assert rows[name]["dead_letters"] == 3, rows[name]

    # Before the upgrade a retry cannot apply it (it would skip it and drop the letter).
    report = await admin.dlq_retry(p, "context")
    assert report.done == []
    assert (
        "still unknown to this release: DecisionAdded v3"
        in report.failed[
            next(d.dlq_seq for d in await p.dead_letters.list() if d.original_seq == newer)
        ]
    )

    # The upgrade: the retry applies it and what parked behind it; the live model
    # equals a clean rebuild (which applies it at its place).
    upgrade()
    for name in MODELS:
        report = await admin.dlq_retry(p, name)
        assert len(report.done) == 2, (name, report.failed)  # the v3 event, then its follower
        worker = await run_until_caught_up(p, name)
        left = {d.original_seq for d in await p.dead_letters.list(worker.spec)}
        assert left == {teleported}, name  # this release still knows no Teleported
        if name == "snapshots":
            continue
        assert await worker.model.position("ahead") == 5, name
        clean = await run_until_caught_up(p, name, 2)
        assert {d.original_seq for d in await p.dead_letters.list(clean.spec)} == {teleported}
        await admin.dlq_discard(p, name)
    for name in ("context", "timeline", "graph"):
        live = await run_until_caught_up(p, name)
        clean = await run_until_caught_up(p, name, 2)
        assert await live.model.digest() == await clean.model.digest(), name


async def test_omni_models_dead_letter_a_newer_releases_version_and_flow_on(
    omni: Projection,  # noqa: F811
) -> None:
    from jetsource._gen.omni.v1.lifecycle_pb2 import ProcessingStarted
    from jetsource.domains.omni.models import OMNI_EVENTS

    p = omni
    store = p.domain_store("omni")
    await omni_history(p, "evt-a", 1)  # received
    envelope = EventEnvelope(
        event_id="evt-a-2-future",
        event_type="ProcessingStarted",
        aggregate_type="omni",
        aggregate_id="evt-a",
        aggregate_version=2,
        schema_version=2,
        payload=ProcessingStarted().SerializeToString(),
    )
    seq = await publish_raw(
        store,
        f"{store.settings.subject_prefix}.evt-a.ProcessingStarted",
        envelope.SerializeToString(),
    )
    await omni_history(p, "evt-b", 3, seed=2)
    worker = await run_until_caught_up(p, OMNI_EVENTS)
    letters = await p.dead_letters.list(worker.spec)
    assert [(d.original_seq, d.aggregate_id) for d in letters] == [(seq, "evt-a")]
    assert letters[0].reason.startswith(
        "ProcessingStarted v2 was written by a newer release: this release knows "
        "ProcessingStarted up to v1; upgrade"
    )
    assert worker.stats.unknown == 0
    assert await worker.model.position("evt-b") == 3
