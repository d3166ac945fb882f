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


async def newer_release_path(
    p: Projection, upgrade: Callable[[], None], models: tuple[str, ...]
) -> None:
    """Each of ``models`` dead-letters a newer release's events once, naming them, its
    story parked behind, the others flowing on; a retry leaves them before the upgrade
    and applies them after it; the live model then equals a clean rebuild (built after
    the release-unknown type's letter is discarded: stepped over by both)."""
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
    for name in models:
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
    for name in models:
        await p.control.ensure(name, 1)
    rows = {r["model"]: r for r in await admin.status(p) if r.get("version") == 1}
    for name in models:
        assert rows[name]["dead_letters"] == 3, rows[name]

    # Before the upgrade a retry cannot apply it (it would skip it and drop the letter).
    report = await admin.dlq_retry(p, models[0])
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
    for name in models:
        report = await admin.dlq_retry(p, name)
        assert len(report.done) == 2, (name, report.failed)  # the v3 event, then its follower
        worker = await run_until_caught_up(p, name)
        left = {d.original_seq for d in await p.dead_letters.list(worker.spec)}
        assert left == {teleported}, name  # this release still knows no Teleported
        if name == "snapshots":
            continue
        assert await worker.model.position("ahead") == 5, name
        await admin.dlq_discard(p, name)  # steps the story past it
        assert await worker.model.position("unknown") == 4, name
        clean = await run_until_caught_up(p, name, 2)  # steps over it, by rule
        assert await p.dead_letters.list(clean.spec) == [], name
        assert await clean.model.position("ahead") == 5, name
        if name in ("context", "timeline", "graph"):
            assert await worker.model.digest() == await clean.model.digest(), name


async def test_a_newer_releases_event_is_dead_lettered_named_and_applied_after_the_upgrade(
    projection: Projection,  # noqa: F811
    upgrade: Callable[[], None],
) -> None:
    """One model here; every model in
    tests/chaos/test_newer_release_every_model_chaos.py (slow)."""
    await newer_release_path(projection, upgrade, ("context",))


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


async def test_discarding_a_newer_releases_letter_steps_its_story_past_it(
    projection: Projection,  # noqa: F811
) -> None:
    """`dlq discard` of a newer release's event wrote nothing before and deleted the
    letter: the story stayed at the version before it for good (the letters parked
    behind it failed "waiting for version", new events parked again), and a rebuild
    dead-lettered it again with everything behind it. Now the discard steps the model
    past it at its place, as any discarded letter, and a rebuild steps over it."""
    p = projection
    prefix = p.store.settings.subject_prefix
    await seed(p.store, ["s"], 3)
    tele = await raw_publish(
        p, f"{prefix}.s.Teleported", future("s", "Teleported", 4, 1, b"\x08\x01")
    )
    await p.store.append("s", [NewEvent(ev.DecisionAdded(decision_id="d5", title="t"))], 4)
    worker = await run_until_caught_up(p, "context")
    first = next(d for d in await p.dead_letters.list(worker.spec) if d.original_seq == tele)
    report = await admin.dlq_discard(p, "context", dlq_seqs=[first.dlq_seq])
    assert report.done == [first.dlq_seq]
    assert await worker.model.position("s") == 4  # stepped past it
    report = await admin.dlq_retry(p, "context")  # the one parked behind it
    assert len(report.done) == 1 and not report.failed, report
    assert await worker.model.position("s") == 5
    await p.store.append("s", [NewEvent(ev.DecisionAdded(decision_id="d6", title="t"))], 5)
    worker = await run_until_caught_up(p, "context")
    assert await worker.model.position("s") == 6
    assert await p.dead_letters.list(worker.spec) == []
    clean = await run_until_caught_up(p, "context", 2)  # a rebuild steps over it too
    assert await p.dead_letters.list(clean.spec) == []
    assert await clean.model.position("s") == 6
    assert await worker.model.digest() == await clean.model.digest()


async def test_erasure_takes_snapshots_again_only_up_to_a_newer_releases_event(
    projection: Projection,  # noqa: F811
) -> None:
    """Taking an aggregate's snapshots again (erasure) folded its whole story, a newer
    release's event as a no-op, and snapshotted past it: after the upgrade `dlq retry`
    found the model past it and dropped its letter unapplied. Now it stops before it."""
    from jetsource.projection.erasure import _resnapshot
    from jetsource.projection.snapshots import SnapshotModel

    p = projection
    prefix = p.store.settings.subject_prefix
    await seed(p.store, ["s"], 3)
    payload = ev.DecisionAdded(decision_id="dn", title="v3").SerializeToString()
    await raw_publish(p, f"{prefix}.s.DecisionAdded", future("s", "DecisionAdded", 4, 3, payload))
    later = [NewEvent(ev.DecisionAdded(decision_id=f"d{v}", title="t")) for v in range(5, 106)]
    await p.store.append("s", later, 4)
    worker = await run_until_caught_up(p, "snapshots")
    assert await worker.model.position("s") < 4  # parked behind its letter
    assert isinstance(worker.model, SnapshotModel)
    await _resnapshot(p, worker.model, "context", "s")
    assert await worker.model.position("s") < 4
