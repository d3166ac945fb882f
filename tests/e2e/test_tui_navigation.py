"""Moving between the TUI's screens by their keys, headless with Textual's pilot against a
real NATS server: the key of the screen already shown (``s`` on the sessions list, ``p``
twice, ``s`` from a session opened from the list) ended the TUI with a DuplicateIds
traceback, and the contexts screen gave every key to its id box (``s``, ``p``, ``q``
were typed into it instead of acted on)."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.domain_views import DeadLettersScreen, OmniScreen
from jetsource.tui.other_views import ContextsScreen, ProcessesScreen
from jetsource.tui.session_view import SessionScreen, SessionsScreen
from tests.e2e.test_tui import SIZE, app_settings, client, until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e

SCREENS = {
    "s": SessionsScreen,
    "p": ProcessesScreen,
    "c": ContextsScreen,
    "m": OmniScreen,
    "d": DeadLettersScreen,
}


async def test_every_screen_key_pressed_again_keeps_the_screen(
    client: SessionsClient,  # noqa: F811
    app_settings: SessionsAppSettings,  # noqa: F811
) -> None:
    async with session(client.writer, "generate") as s:
        s.emit("level_started", {"level": 0})
    app = JetsourceTui(
        Backend(app_settings, "127.0.0.1:1", omni_address="127.0.0.1:1"), refresh_s=0.3
    )
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#sessions", DataTable)
        await until(pilot, lambda: table.row_count == 1)
        shown = app.screen
        await pilot.press("s")  # the key of the screen shown
        await pilot.pause(0.2)
        assert app.is_running and app.screen is shown
        await pilot.press("enter")  # a session, then back to the list by its key
        await until(pilot, lambda: isinstance(app.screen, SessionScreen))
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SessionsScreen))
        assert app.is_running and app.screen is shown
        for key in "ppccmmddssp":  # each twice, and from each to the next
            await pilot.press(key)
            await until(pilot, lambda key=key: isinstance(app.screen, SCREENS[key]))  # type: ignore[misc]
            assert app.is_running, key
        assert [type(x) for x in app.screen_stack][1:] == [ProcessesScreen]


async def test_the_contexts_screen_leaves_the_keys_to_the_app_until_slash(
    app_settings: SessionsAppSettings,  # noqa: F811
) -> None:
    app = JetsourceTui(
        Backend(app_settings, "127.0.0.1:1", omni_address="127.0.0.1:1"), refresh_s=0.3
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ContextsScreen))
        await pilot.pause(0.2)
        assert app.focused is None
        await pilot.press("s")  # acted on, not typed into the id box
        await until(pilot, lambda: isinstance(app.screen, SessionsScreen))
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ContextsScreen))
        await pilot.press("slash", *"story-1")
        await pilot.pause(0.1)
        assert app.screen.query_one("#context-id").value.lstrip("/") == "story-1"  # type: ignore[attr-defined]
        await pilot.press("escape", "q")
        await pilot.pause(0.2)
        assert not app.is_running
