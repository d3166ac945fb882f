"""What the admin-race, archive-phase-fence and erasure tests share: a model version's
state set or awaited in the control entry, and a subject's two context stories."""

from __future__ import annotations

import asyncio

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import ModelControl


async def marked(p: Projection, version: int, state: str, model: str = "context") -> None:
    """Wait (up to some 5 s) until ``model``'s control entry says ``version`` is
    ``state``; fail the test if it never does."""
    for _ in range(250):
        control = await p.control.get(model)
        if control is not None and control.versions.get(version) == state:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"v{version} never {state}")


async def set_version_state(
    p: Projection, version: int, state: str, model: str = "context"
) -> None:
    """Write ``state`` for ``version`` into ``model``'s control entry, as another run
    (one that stopped, or one still at it) left it."""

    def put(c: ModelControl) -> None:
        c.versions[version] = state

    await admin._save(p, model, put)


async def stories_of(p: Projection, subject: str, stories: tuple[str, ...] = ("s1", "s2")) -> None:
    """Each of ``stories`` created by ``subject`` (named as its actor) with a decision
    of theirs: two events each, the subject's name in both."""
    for story in stories:
        await p.store.append(
            story,
            [
                NewEvent(
                    ev.ContextCreated(title="T", created_by=subject),
                    metadata={"actor": subject},
                ),
                NewEvent(ev.DecisionAdded(decision_id="d1", author=subject, title="D")),
            ],
            0,
        )
