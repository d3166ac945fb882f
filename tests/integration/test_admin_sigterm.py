"""SIGTERM (`kill`, `timeout`, a CI limit, systemd) on a long admin command is taken as
Ctrl-C: `projector reset` said nothing (exit 143) and `status` showed the version
``resetting`` until its claim's heartbeat went stale; now one ``cancelled`` line (exit
130) saying to run it again, the version ``stopped`` at once, and the same command run
again finishes it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from asyncio.subprocess import PIPE
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


async def test_sigterm_on_reset_is_said_and_status_shows_it_stopped(
    projection: Projection,
) -> None:
    from tests.integration.test_admin_contract import cli_env

    p = projection
    await seed(p.store, story_ids(2), 5)
    await build_context_v1(p)
    env = cli_env(p) | {"JETSOURCE_PROJECTOR__CONTROL_POLL_S": "2"}
    command = [sys.executable, "-m", "jetsource", "projector", "reset", "context", "--yes"]
    child = await asyncio.create_subprocess_exec(
        *command, "--json", env=env, stdout=PIPE, stderr=PIPE
    )
    for _ in range(200):  # until it has claimed the version and fenced it
        control = await p.control.get("context")
        if control is not None and 1 in control.claims:
            break
        await asyncio.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 130, err
    assert out == b""
    error = json.loads(err.decode().strip().splitlines()[-1])["error"]
    assert error["code"] == "cancelled" and "again" in error["message"]
    rows = {r["version"]: r for r in await admin.status(p) if r["model"] == "context"}
    assert rows[1]["state"] == "stopped", rows[1]

    report = await admin.reset(p, "context", settle_s=0.1, verify_s=0.1)
    assert report.checkpoint == 10


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
