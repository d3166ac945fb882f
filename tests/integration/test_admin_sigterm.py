"""SIGTERM (`kill`, `timeout`, a CI limit, systemd) on a long admin command is taken as
Ctrl-C: `projector reset` said nothing (exit 143) and `status` showed the version
``resetting`` until its claim's heartbeat went stale; now one ``cancelled`` line (exit
130) saying to run it again, the version ``stopped`` at once, and the same command run
again finishes it (the reset case is the Ctrl-C test's ``sigterm`` row in
test_admin_concurrent_runs.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from tests.projector_fixtures import build_context_v1, context_projection, seed, story_ids

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique) as p:
        yield p


async def test_a_cutover_stopped_in_its_drop_is_finished_by_the_same_command(
    projection: Projection,
) -> None:
    """`projector cutover --drop-old` stopped in the drop of the old version (Ctrl-C,
    SIGTERM, killed: the cutover made, the old version marked ``dropped``): the same
    command again was refused "already the active version", the old version left half
    dropped for good; it now finishes the drop."""
    from jetsource.projection.control import DROPPED

    p = projection
    await seed(p.store, story_ids(2), 5)
    await build_context_v1(p)
    await admin.rebuild(p, "context", 2)
    first = asyncio.create_task(admin.cutover(p, "context", 2, drop_old=True))
    for _ in range(400):  # until the drop has marked v1 (it then settles a control poll)
        control = await p.control.get("context")
        if control is not None and control.versions.get(1) == DROPPED:
            break
        await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    control = await p.control.get("context")
    assert control is not None and control.active == 2 and control.versions.get(1) == DROPPED

    again = await admin.cutover(p, "context", 2, drop_old=True)
    assert again["active"] == 2 and again["previous"] == 1 and "dropped" in again
    control = await p.control.get("context")
    assert control is not None and 1 not in control.versions
    with pytest.raises(admin.AdminError, match="already the active version"):
        await admin.cutover(p, "context", 2, drop_old=True)
