"""`sessions export|follow --after N`: a seq the ledger cannot hold is refused naming
--after, and an export after a seq of a session the ledger does not know is NOT_FOUND,
as from the first seq (real NATS, the stream reader)."""

from __future__ import annotations

import json

import pytest

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.test_cli import cli

pytestmark = pytest.mark.integration

I64 = 2**63 - 1


@pytest.mark.parametrize("command", ["export", "follow"])
@pytest.mark.parametrize("after", [str(I64 + 1), str(2**64), "1" + "0" * 40])
async def test_an_after_past_int64_is_refused_naming_it(
    app_settings: SessionsAppSettings, command: str, after: str
) -> None:
    """It was exit 0 with nothing (export), a wait for ever (follow, the stream reader)
    or a ValueError traceback (follow, the query reader: WatchSession's after_seq is
    int64)."""
    run = await cli(app_settings, command, "s-1", "--after", after)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "--after" in run.stderr and run.stdout == "", run.stderr


async def test_an_after_of_int64_is_taken(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    async with session(client.writer, "scan") as s:
        s.emit("scan_started", {"root": "/"})
    run = await cli(app_settings, "export", s.id, "--after", str(I64))
    assert (run.returncode, run.stdout) == (0, ""), run.stderr


@pytest.mark.parametrize("after", ["0", "3"])
async def test_export_after_of_an_unknown_session_is_not_found(
    app_settings: SessionsAppSettings, after: str
) -> None:
    """With --after 3 it printed nothing and exited 0, as for a session with 3 events."""
    run = await cli(app_settings, "export", "no-such-session", "--after", after, "-o", "json")
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert json.loads(run.stderr)["error"]["code"] == "NOT_FOUND"


async def test_export_after_its_last_seq_is_empty(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    async with session(client.writer, "scan") as s:
        s.emit("scan_started", {"root": "/"})
    run = await cli(app_settings, "export", s.id, "--after", "3")
    assert (run.returncode, run.stdout) == (0, ""), run.stderr
    run = await cli(app_settings, "export", s.id, "--after", "2")
    assert run.returncode == 0 and [json.loads(x)["seq"] for x in run.stdout.splitlines()] == [3]
