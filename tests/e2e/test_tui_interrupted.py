"""A session whose emitter went quiet, in the TUI's session view, headless with Textual's
pilot against a real NATS server: past ``interrupted_after_s`` with nothing recorded its
header says ``interrupted`` as the sessions list and ``sessions show`` do (it said
``active  LIVE`` for ever), and an event that comes after all makes it active again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from textual.widgets import Static

from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.emit import Session
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.session_view import SessionScreen
from tests.e2e.test_tui import SIZE, until
from tests.infra import Server
from tests.integration.sessions.conftest import provision, sessions_settings

pytestmark = pytest.mark.e2e


@pytest.fixture
async def quick_settings(nats_server: Server, unique: str) -> SessionsAppSettings:
    s = sessions_settings(nats_server.url, unique, interrupted_after_s=1.0)
    await provision(s)
    return s


@pytest.fixture
async def quick_client(quick_settings: SessionsAppSettings) -> AsyncIterator[SessionsClient]:
    async with open_sessions(quick_settings) as c:
        yield c


def header(app: JetsourceTui) -> str:
    return str(app.screen.query_one("#header", Static).render())


async def test_a_quiet_live_session_is_shown_interrupted_then_active_again(
    quick_client: SessionsClient, quick_settings: SessionsAppSettings
) -> None:
    s = Session(quick_client.writer, "watch", heartbeat_s=3600)
    await s.__aenter__()
    try:
        s.emit("level_started", {"level": 0})
        await s.flush()
        app = JetsourceTui(Backend(quick_settings), refresh_s=0.3, open_session=s.id)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, SessionScreen))
            screen = app.screen
            assert isinstance(screen, SessionScreen)
            await until(pilot, lambda: screen.live and header(app).startswith("active"))
            # nothing recorded for longer than interrupted_after_s (1 s)
            await until(pilot, lambda: header(app).startswith("interrupted"), 10)
            assert screen.live  # still followed: the emitter may come back
            s.emit("level_started", {"level": 1})
            await s.flush()
            await until(pilot, lambda: header(app).startswith("active"), 10)
    finally:
        await s.close()
