"""`sessions follow --after SEQ` resumed after the last line it printed, on a real NATS
server: a session that ended at or below SEQ gives nothing and stops (it waited for
ever for a `session_ended` it had already shown); an active one is still followed."""

from __future__ import annotations

import asyncio
import sys

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.ledger import Recorded
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.test_cli import CLI, env_of


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
