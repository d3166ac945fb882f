"""The TUI's Contexts view as an operator uses it, against the real context services:
a story too long for the screen scrolls, and a query service that goes away and comes
back on its own is retried without a key pressed."""

from __future__ import annotations

import html
import time
from collections.abc import Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.query.server import build as build_query
from jetsource.query.settings import QueryOptions, QuerySettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.other_views import ContextsScreen
from tests.e2e.test_query import EVERY, Stack, stack, write_story  # noqa: F401
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.e2e


async def until(pilot: Pilot[None], check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the TUI did not get there in time"
        await pilot.pause(0.05)


def drawn(app: JetsourceTui) -> str:
    """The screen as text (the SVG writes a space as a no-break space entity)."""
    return html.unescape(app.export_screenshot()).replace("\xa0", " ")


def backend_for(stack: Stack, settings: JetsourceSettings) -> Backend:  # noqa: F811
    return Backend(
        SessionsAppSettings(nats=settings.nats), query_address=f"127.0.0.1:{stack.query.port}"
    )


async def test_a_story_longer_than_the_screen_scrolls(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    version = await write_story(stack.commands, "long-story", 90)
    await stack.reads.get_context("long-story", min_version=version)
    app = JetsourceTui(backend_for(stack, settings), refresh_s=1.0)
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("c", "slash", *"long-story", "enter")
        screen = app.screen
        assert isinstance(screen, ContextsScreen)
        body = screen.query_one("#context", Static)
        await until(pilot, lambda: "Decisions (90)" in str(body.content))
        await pilot.pause(0.2)
        assert "decision 89" not in drawn(app)  # below the screen's edge
        for _ in range(6):
            await pilot.press("pagedown")
        await pilot.pause(0.2)
        assert "decision 89" in drawn(app)  # every decision can be read


async def test_a_query_service_that_goes_away_is_retried_until_it_answers(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
    unique: str,
) -> None:
    version = await write_story(stack.commands, "retried-story", 6)
    await stack.reads.get_context("retried-story", min_version=version)
    port = stack.query.port
    app = JetsourceTui(backend_for(stack, settings), refresh_s=1.0)
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("c", "slash", *"retried-story", "enter")
        screen = app.screen
        assert isinstance(screen, ContextsScreen)
        scrubber = screen.query_one("#scrubber", Static)
        banner = screen.query_one("#banner", Static)
        await until(pilot, lambda: f"version {version} of {version}" in str(scrubber.content))
        await stack.query.stop(0)
        await pilot.press("left")
        await until(pilot, lambda: banner.display and "UNAVAILABLE" in str(banner.content))
        assert f"context query service at 127.0.0.1:{port}" in str(banner.content)
        assert app.is_running
        # the same service comes back on the same port; no key is pressed
        base = projector_settings(settings, unique, snapshots={"every": EVERY})
        shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
        stack.query = await build_query(
            QuerySettings(
                **shared,
                projector=base.projector,
                query=QueryOptions(grpc_port=port, metrics_port=0, watch_poll_s=0.5),
            )
        )
        await until(pilot, lambda: not banner.display)
        await until(pilot, lambda: f"version {version - 1} of {version}" in str(scrubber.content))
