"""`projector replay --actor` selects what the context write path recorded: an actor
that shows nothing ("\\u3164", a Hangul filler; "\\u200b") is one a context command
takes (its one-line rule) and records in the events' envelope metadata, and the
replay's shared blank rule refused it, so those events could never be replayed.
Against a real publisher (gRPC), nats-server, Valkey and the graph store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import create_contexts, projection_of

pytestmark = pytest.mark.integration

NOTHING_SHOWN = ("\u3164", "\u200b")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique) as p:
        yield p


async def test_replay_selects_the_actor_the_write_path_recorded(projection: Projection) -> None:
    p = projection
    actors = (*NOTHING_SHOWN, "ana")
    # Each command taken: its actor recorded as it is.
    await create_contexts(p, {f"s{i}": actor for i, actor in enumerate(actors)})
    await p.control.ensure("context", 1)
    worker = Worker(
        p.nc, p.store_for("context"), p.model("context", 1), p.dead_letters, p.settings.projector
    )
    await worker.run(until_caught_up=True)

    for i, actor in enumerate(NOTHING_SHOWN):
        report = await admin.replay(p, "context", actor=actor)
        assert (report.events, report.aggregates, report.failed) == (1, 1, {}), (actor, report)
        assert report.selectors == {"actor": actor}
        recorded = [e async for e in p.store.read_all()]
        assert recorded[i].envelope.metadata.get("actor") == actor  # exactly, not stripped
    # Matched exactly: a space around it, or the other invisible one, is another actor.
    assert (await admin.replay(p, "context", actor="\u3164 ")).events == 0
