"""Keys the TUI's help lists that did not do what it says. PgUp/PgDn on the messages
and dead-letters screens are "Detail down/up": the table held the keys and its own
PgUp/PgDn moved its cursor, so a long raw payload or letter below it never scrolled.
The dead letters are given by the backend here (the screen's reads against a real
projector are tests/e2e/test_tui_deadletters.py)."""

from __future__ import annotations

import time

import pytest
from textual.containers import VerticalScroll
from textual.widgets import DataTable

from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.projection.deadletters import DeadLetter
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.domain_views import DeadLettersScreen
from tests.e2e.test_tui import SIZE, app_settings, until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


async def test_page_down_and_up_scroll_the_detail_not_the_table(
    app_settings: SessionsAppSettings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = b"\n".join(b"line %d" % n for n in range(300))
    letters = [
        DeadLetter(n, "m", 1, f"agg{n}", n, "subj", "eid", "boom", 1, time.time_ns(), body)
        for n in range(1, 100)
    ]

    async def listed() -> list[DeadLetter]:
        return letters

    async def one(seq: int) -> DeadLetter:
        return letters[seq - 1]

    backend = Backend(app_settings)
    monkeypatch.setattr(backend, "dead_letters", listed)
    monkeypatch.setattr(backend, "dead_letter", one)
    app = JetsourceTui(backend, refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DeadLettersScreen))
        screen = app.screen
        assert isinstance(screen, DeadLettersScreen)
        await until(pilot, lambda: screen.loaded > 0)
        box = screen.query_one("#detail-scroll", VerticalScroll)
        table = screen.query_one("#rows", DataTable)
        await pilot.press("enter")
        await until(pilot, lambda: box.max_scroll_y > 100)
        await pilot.press("pagedown")
        await until(pilot, lambda: box.scroll_y > 0)
        assert table.cursor_row == 0
        await pilot.press("pageup")
        await until(pilot, lambda: box.scroll_y == 0)
        assert table.cursor_row == 0
    assert app._exception is None
