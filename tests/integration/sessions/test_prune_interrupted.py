"""Pruning interrupted sessions on a real NATS server. A session that ended interrupted
(cancelled, Ctrl-C) goes by the rules of a completed one, by age and by count; one with
no ending (its emitter gone) once nothing has been recorded for it for
``prune_unended_after_s``; a live one never. Before, interrupted sessions were never
pruned, by any rule: they piled up on the ledger for good."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.sessions import app
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.test_cli import env_of


async def _ended(client: SessionsClient, how: BaseException | None) -> str:
    s = Session(client.writer, "run", heartbeat_s=60)
    await s.__aenter__()
    s.emit("scan_started", {"root": "/"})
    await s.close(how)
    await asyncio.sleep(0.005)  # distinct end times
    return s.id


async def gone_session(client: SessionsClient) -> str:
    """A session whose emitter died: no ending, nothing recorded after its start."""
    s = Session(client.writer, "emitter died", heartbeat_s=60)
    await s.__aenter__()
    assert s._task is not None
    s._task.cancel()
    return s.id


async def test_interrupted_sessions_are_pruned_by_age_and_count_and_a_live_one_never(
    client: SessionsClient,
) -> None:
    cancelled = await _ended(client, asyncio.CancelledError())
    ctrl_c = await _ended(client, KeyboardInterrupt())
    gone = await gone_session(client)
    async with session(client.writer, "live", heartbeat_s=0.1) as live:
        await asyncio.sleep(1.3)  # the gone one is quiet past 1 s; the live one beats
        young = await _ended(client, None)
        quick = client.sessions.settings.model_copy(
            update={"interrupted_after_s": 0.5, "prune_unended_after_s": 1.0}
        )
        s = Sessions(client.sessions.reader, quick)
        statuses = {r.session_id: r.status for r in await s.list_sessions()}
        assert statuses == {
            cancelled: "interrupted",
            ctrl_c: "interrupted",
            gone: "interrupted",
            live.id: "active",
            young: "completed",
        }

        # By count: the newest ended one kept (the young completed one); every
        # interrupted one goes, the one with no ending too; the live one stays.
        plan = await s.prune(client.purger, older_than_s=0, keep=1, dry_run=True)
        assert [r.session_id for r in plan.pruned] == [cancelled, ctrl_c, gone]
        # The one with no ending, quiet less than the unended age, stays (no place kept).
        wary = await s.prune(client.purger, 0, 1, dry_run=True, unended_after_s=3600)
        assert [r.session_id for r in wary.pruned] == [cancelled, ctrl_c]

        # By age: ended longer ago than 1 s (the gone one's end: its last event).
        report = await s.prune(client.purger, older_than_s=1.0, keep=0)
        assert [r.session_id for r in report.pruned] == [cancelled, ctrl_c, gone]
        left = {r.session_id: r.status for r in await s.list_sessions()}
        assert left == {live.id: "active", young: "completed"}
        assert await client.sessions.reader.events(cancelled) == []


async def test_the_cli_takes_the_unended_age_and_refuses_a_bad_one(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    gone = await gone_session(client)
    cancelled = await _ended(client, asyncio.CancelledError())
    await asyncio.sleep(1.2)
    env = {**env_of(app_settings), "JETSOURCE_SESSIONS__INTERRUPTED_AFTER_S": "0.5"}

    def prune(*args: str) -> tuple[int, str, str]:
        result = CliRunner(env=env).invoke(
            app, ["prune", "--dry-run", "-o", "json", *args], catch_exceptions=False
        )
        out.set_mode(None)
        return result.exit_code, result.stdout, result.stderr

    code, stdout, stderr = await asyncio.to_thread(prune, "--older-than", "1s", "--keep", "0")
    assert code == 0, stderr
    assert json.loads(stdout)["sessions"] == [cancelled]  # the default: a day quiet
    code, stdout, stderr = await asyncio.to_thread(
        prune, "--older-than", "1s", "--keep", "0", "--unended-after", "1s"
    )
    assert code == 0, stderr
    assert json.loads(stdout)["sessions"] == [gone, cancelled]
    # In text each is said with its end: the one with no ending, its last event's time.
    result = await asyncio.to_thread(
        CliRunner(env=env).invoke,
        app,
        ["prune", "--dry-run", "--older-than", "1s", "--keep", "0", "--unended-after", "1s"],
        catch_exceptions=False,
    )
    out.set_mode(None)
    rows = [line.split("\t") for line in result.stdout.splitlines() if line.startswith("  ")]
    assert [(r[0].strip(), r[1]) for r in rows] == [
        (gone, "interrupted"),
        (cancelled, "interrupted"),
    ]
    assert all(r[2].startswith("20") for r in rows), rows  # was empty for the gone one
    for bad in ("0", "soon"):
        code, stdout, stderr = await asyncio.to_thread(prune, "--unended-after", bad)
        assert code == 2, (bad, stderr)
        error = json.loads(stderr)["error"]
        assert error["field"] == "--unended-after", error
