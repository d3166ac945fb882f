"""`projector rebuild --workers K` with a build worker killed midway: the error says
which worker (its partitions), how it ended (a signal leaves no stderr: the message was
"a build worker failed: " and nothing), and that running the command again resumes;
the run again finishes, equal to a one-worker build, nothing applied twice."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource.core.envelope import NewEvent
from jetsource.domains.context.samples import story_events
from jetsource.projection import admin
from jetsource.projection import partitions_build as pb
from jetsource.projection.bootstrap import Projection
from tests.integration.test_partitions import projection  # noqa: F401 (the fixture)
from tests.projector_fixtures import story_ids

pytestmark = pytest.mark.integration


async def test_a_killed_build_worker_is_named_and_the_rebuild_resumes(
    projection: Projection,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = projection
    store = p.store_for("context")
    stories = story_ids(20, "k")
    for s in stories:
        await store.append(s, [NewEvent(m) for m in story_events(s, 10, 3)], 0)
    single = await admin.rebuild(p, "context", 2)

    start = pb.start_children

    async def kill_the_first(*args: Any) -> list[pb.Child]:
        children = await start(*args)
        children[0].process.kill()
        return children

    monkeypatch.setattr(pb, "start_children", kill_the_first)
    with pytest.raises(admin.AdminError) as failed:
        await admin.rebuild(p, "context", 3, workers=2)
    message = str(failed.value)
    assert "partitions [0, 2]" in message and "SIGKILL" in message, message
    assert "run the same command again" in message, message
    monkeypatch.setattr(pb, "start_children", start)
    again = await admin.rebuild(p, "context", 3, workers=2)
    assert again.checkpoint == single.checkpoint
    assert (await p.model("context", 3).checkpoint()).applied == 200  # once each
    assert await p.model("context", 3).digest() == await p.model("context", 2).digest()
