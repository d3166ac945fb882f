"""Regressions found by the model-based test (test_model_based.py), each minimised."""

from __future__ import annotations

import asyncio
import time

import pytest

from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.emit import Session
from jetsource.domains.sessions.format import EventFormatError
from jetsource.domains.sessions.service import SessionNotFoundError
from jetsource.domains.sessions.settings import SessionsAppSettings

pytestmark = pytest.mark.integration


async def test_a_malformed_event_type_is_refused_at_emit_and_the_session_goes_on(
    client: SessionsClient,
) -> None:
    """It was queued, the ledger refused the batch carrying it, and the session failed:
    the good events around it were dropped and session_ended said 'ingest commit
    failed'."""
    s = Session(client.writer, "scan", heartbeat_s=3600)
    await s.__aenter__()
    s.emit("good_one", {"a": 1})
    for bad in ("Bad Type", "bad.type", "x" * 65):
        with pytest.raises(EventFormatError) as caught:
            s.emit(bad, {})
        assert caught.value.field == "type"
    s.emit("good_two", {"a": 2})
    await s.close()
    assert (s.error, s.dropped) == (None, 0)
    events = await client.sessions.export(s.id)
    assert [e.type for e in events] == ["session_started", "good_one", "good_two", "session_ended"]
    assert events[-1].data["status"] == "completed"


async def test_following_an_unknown_session_on_the_stream_is_not_found_not_a_hang(
    app_settings: SessionsAppSettings,
) -> None:
    """The stream reader waited for ever (show and export said NOT_FOUND, and the query
    reader said so after its timeout); a pruned session is unknown the same way."""
    settings = app_settings.model_copy(
        update={"client": app_settings.client.model_copy(update={"timeout_s": 0.5})}
    )
    async with open_sessions(settings) as c:
        started = time.monotonic()
        with pytest.raises(SessionNotFoundError):
            async for _ in c.sessions.follow("no-such-session"):
                pass
        assert time.monotonic() - started < 5
        # A session that begins while its follower waits is followed as before.
        s = Session(c.writer, "late", heartbeat_s=3600, session_id=f"late-{time.time_ns()}")
        got: list[str] = []

        async def follow() -> None:
            async for r in c.sessions.follow(s.id):
                got.append(r.event.type)

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        await s.__aenter__()
        await s.close()
        await asyncio.wait_for(task, 10)
        assert got == ["session_started", "session_ended"]
