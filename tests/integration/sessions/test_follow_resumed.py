"""`sessions follow --after SEQ` resumed after the last line it printed, on a real NATS
server: a session that ended at or below SEQ gives nothing and stops (it waited for
ever for a `session_ended` it had already shown); an active one is still followed."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.format import SessionEvent, to_canonical
from jetsource.domains.sessions.ledger import Recorded
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.test_cli import CLI, cli, env_of


async def _follow(client: SessionsClient, session_id: str, after: int) -> list[Recorded]:
    return [r async for r in client.sessions.follow(session_id, after)]


async def test_following_an_ended_session_after_its_end_stops_at_once(
    client: SessionsClient,
) -> None:
    async with session(client.writer, "context generate") as s:
        s.emit("level_started", {"level": 0})
    last = (await client.sessions.export(s.id))[-1]
    assert (last.seq, last.type) == (3, "session_ended")
    for after in (3, 4, 2**62):  # at its end, past it
        assert await asyncio.wait_for(_follow(client, s.id, after), 5) == []
    # just before its end: the end, then it stops
    seen = await asyncio.wait_for(_follow(client, s.id, 2), 5)
    assert [r.event.type for r in seen] == ["session_ended"]


async def test_following_an_active_session_after_its_last_seq_still_waits_for_it(
    client: SessionsClient,
) -> None:
    s = Session(client.writer, "context generate")
    await s.__aenter__()
    s.emit("level_started", {"level": 0})
    await s.flush()
    task = asyncio.create_task(_follow(client, s.id, 2))
    await asyncio.sleep(0.5)
    assert not task.done()  # nothing above seq 2 yet, and no end
    await s.close()
    seen = await asyncio.wait_for(task, 5)
    assert [(r.event.seq, r.event.type) for r in seen] == [(3, "session_ended")]


async def test_cli_follow_resumed_after_the_end_exits_0_with_nothing(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    async with session(client.writer, "context generate") as s:
        s.emit("level_started", {"level": 0})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        "follow",
        s.id,
        "--after",
        "3",
        env=env_of(app_settings, inherit=True),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, stdout) == (0, b""), stderr


async def test_cli_follow_stopped_by_ctrl_c_says_how_to_go_on(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    """It exited 130 saying nothing; now the last seq printed and the command that goes on
    from it (JSON with --json), and that command gives the rest."""
    s = Session(client.writer, "watch")
    await s.__aenter__()
    try:
        s.emit("level_started", {"level": 0})
        await s.flush()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLI, "follow", s.id, "--no-stop", "--json",
            env=env_of(app_settings, inherit=True),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        for _ in range(2):  # session_started, level_started
            await asyncio.wait_for(proc.stdout.readline(), 30)
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await s.close()
    assert proc.returncode == 130, stderr
    error = json.loads(stderr.decode().strip().splitlines()[-1])["error"]
    assert error["code"] == "CANCELLED" and error["exit_code"] == 130, error
    assert f"jetsource sessions follow {s.id} --after 2" in error["message"], error
    rest = await asyncio.wait_for(_follow(client, s.id, 2), 10)
    assert [r.event.type for r in rest] == ["session_ended"]


async def test_cli_export_and_follow_into_a_pipe_whose_reader_left_exit_0(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    """`sessions export ID | head -1` exited 1 (a failed pipeline under pipefail), saying
    nothing; `ctx watch` and `process watch` end 0 quietly there, and so do these now."""
    async with session(client.writer, "big", max_pending=5000) as s:
        for i in range(3000):
            s.emit("level_started", {"level": i, "pad": "x" * 100})
    for command in ("export", "follow"):
        script = f'set -o pipefail; "$0" -c "$1" {command} {s.id} | head -1 > /dev/null'
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", script, sys.executable, CLI,
            env=env_of(app_settings, inherit=True),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert (proc.returncode, stderr) == (0, b""), (command, stderr)


async def test_a_follow_resumed_past_an_end_with_events_after_it_stops_at_once(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    """An import (or a raw writer) may append events after a session's end. A follow from
    the start stops at the end; resumed at or past the end, it printed the events after
    it and waited for ever for an end it had already shown: now nothing, exit 0."""
    async with session(client.writer, "context generate") as s:
        pass
    late = SessionEvent(time.time_ns(), s.id, 3, "late_event", {"k": 1})
    await client.writer.record([to_canonical(late)], {s.id: 2})
    assert [e.type for e in await client.sessions.export(s.id)] == [
        "session_started", "session_ended", "late_event",
    ]  # fmt: skip
    whole = await asyncio.wait_for(_follow(client, s.id, 0), 5)
    assert [r.event.type for r in whole] == ["session_started", "session_ended"]
    for after in (2, 3, 4):
        assert await asyncio.wait_for(_follow(client, s.id, after), 5) == [], after
    result = await cli(app_settings, "follow", s.id, "--after", "2")
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
