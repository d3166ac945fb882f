"""A screen's read that gets no answer (NATS paused: its socket open, nothing said; a
server that takes connections and never answers) waits out each request's timeout and
its retries, half a minute and more; the screen showed its old rows with no sign of it
meanwhile. Now the banner says so after ``SLOW_READ_S`` with when what is shown was
read, and clears when a read answers. A real NATS server, paused with SIGSTOP."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from jetsource.tui import lifecycle
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.lifecycle import Banner, Refreshing
from tests.e2e.test_tui import SIZE, until
from tests.infra import start_nats
from tests.integration.sessions.conftest import provision, sessions_settings

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("key", ["s", "p"])
async def test_a_read_with_no_answer_is_said_and_cleared_when_one_comes(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "SLOW_READ_S", 0.6)
    server = start_nats(tmp_path)  # its own: paused below
    if server.proc is None:
        server.stop()
        pytest.skip("needs a NATS server process of this test's own to pause")
    try:
        settings = sessions_settings(server.url, "slow")
        await provision(settings)
        app = JetsourceTui(Backend(settings), refresh_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press(key)
            await until(pilot, lambda: isinstance(app.screen, Refreshing) and app.screen.loaded > 1)
            screen = app.screen
            banner = screen.query_one(Banner)
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                await until(pilot, lambda: "so far" in str(banner.content) and banner.display)
                assert "what is shown was read at" in str(banner.content)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            await until(pilot, lambda: not banner.display)
        assert app._exception is None
    finally:
        server.stop()
