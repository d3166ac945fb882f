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
