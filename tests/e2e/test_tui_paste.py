"""Control characters pasted into the TUI's inputs, headless with Textual's pilot against
a real NATS server: every input of every screen (the sessions filter, a session's log
filter and go-to-seq, the context id and time, the identity lookup) drops them. The
input drew them raw, so a pasted ``\\x1b[2J`` cleared the user's terminal."""

from __future__ import annotations

import html

import pytest
from textual.events import Paste
from textual.widgets import Input

from jetsource.core.printable import UNSAFE
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.session_view import SessionScreen
from tests.e2e.test_tui import SIZE, app_settings, client, until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e

PASTED = "ab\x1b[2J\x1b[31mc\x07\x9b1m\u202ed\x00e\tf\x7f\r\nsecond line"


def drawn(app: JetsourceTui) -> str:
    return html.unescape(app.export_screenshot()).replace("\xa0", " ")


async def test_control_characters_pasted_into_any_input_are_dropped(
    client: SessionsClient,  # noqa: F811
    app_settings: SessionsAppSettings,  # noqa: F811
) -> None:
    async with session(client.writer, "generate") as s:
        s.emit("level_started", {"level": 0})
    app = JetsourceTui(
        Backend(app_settings, "127.0.0.1:1", omni_address="127.0.0.1:1"), refresh_s=0.3
    )
    seen: set[str] = set()
    async with app.run_test(size=SIZE) as pilot:
        for key in ("s", "open", "c", "m"):
            if key == "open":
                await app.push_screen(SessionScreen(app.backend, s.id))
            else:
                await pilot.press(key)
            await until(pilot, lambda: bool(app.screen.query(Input)))
            inputs = list(app.screen.query(Input))
            for box in inputs:
                box.display = True
                box.value = ""
                box.post_message(Paste(PASTED))
                await until(pilot, lambda box=box: bool(box.value))  # type: ignore[misc]
                assert box.value == "ab[2J[31mc1mde f", (box.id, box.value)
                assert not UNSAFE.search(box.value), box.id
                seen.add(box.id or "")
            await pilot.pause(0.1)
            assert "\x1b" not in drawn(app) and "\x9b" not in drawn(app)
            if key == "open":
                await pilot.press("escape")
    assert seen >= {"filter", "log-filter", "seq-input", "context-id", "time-input"}, seen
