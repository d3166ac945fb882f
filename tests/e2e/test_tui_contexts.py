"""The TUI's Contexts view against the real context services (publisher, projector,
snapshotter, query on real NATS, Valkey and graph store): a story's current state, and
the version/time scrubber reading GetContextAtVersion and GetContextAtTime."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from textual.widgets import Static

from jetsource.core.clock import NS, format_rfc3339_ns, from_timestamp
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.format import format_ts, parse_ts
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.other_views import ContextsScreen
from tests.e2e.test_query import Stack, stack, write_story  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e


def save(svg: str, tmp_path: Path) -> None:
    where = Path(os.environ.get("JETSOURCE_TUI_SCREENSHOTS", str(tmp_path)))
    where.mkdir(parents=True, exist_ok=True)
    (where / "contexts.svg").write_text(svg)


async def test_the_contexts_view_scrubs_a_story_by_version_and_time(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
    tmp_path: Path,
) -> None:
    version = await write_story(stack.commands, "tui-story", 6)
    await stack.reads.get_context("tui-story", min_version=version)
    backend = Backend(
        SessionsAppSettings(nats=settings.nats), query_address=f"127.0.0.1:{stack.query.port}"
    )
    app = JetsourceTui(backend, refresh_s=1.0)
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, ContextsScreen)
        scrubber = screen.query_one("#scrubber", Static)
        body = screen.query_one("#context", Static)

        async def until(text: str) -> None:
            deadline = time.monotonic() + 15
            while text not in str(scrubber.content):
                assert time.monotonic() < deadline, f"{text!r} not in {scrubber.content!r}"
                await pilot.pause(0.02)

        await pilot.press("slash", *"tui-story", "enter")
        await until(f"version {version} of {version} (latest)")
        assert "A story" in str(body.content) and "Decisions (6)" in str(body.content)
        await pilot.press("left", "left")
        await until(f"version {version - 2} of {version}")
        older = await stack.reads.at_version("tui-story", version - 2)
        assert f"Decisions ({len(older.context.decisions)})" in str(body.content)
        # a time: just after version 3 was recorded
        events = await stack.reads.list_events("tui-story", 1, 3)
        at = format_ts(from_timestamp(events.events[2].recorded_at) + 1_000_000)
        then = await stack.reads.at_time("tui-story", parse_ts(at))  # ms precision
        assert then.context.version >= 3
        await pilot.press("t", *at, "enter")
        await until(f"version {then.context.version} of {version} (at {at[:-1]}000000Z)")
        await pilot.press("end")
        await until(f"version {version} of {version} (latest)")
        save(app.export_screenshot(title="jetsource tui: contexts"), tmp_path)
        await pilot.press("slash", *"no-such-story", "enter")
        await pilot.pause(0.5)
        assert app.is_running  # an unknown story is a notice, not a crash


async def test_the_time_box_reads_the_cli_s_times_to_the_nanosecond(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    """The time box reads what ``ctx show --at`` reads: a recorded_at pasted from ``ctx
    events`` (nanoseconds) is that event's version, and a time with an offset or without
    a fraction is taken; the TUI read only the session log's form (exactly three
    fractional digits, so an event's own time asked for the version before it)."""
    version = await write_story(stack.commands, "tui-times", 4)
    await stack.reads.get_context("tui-times", min_version=version)
    events = (await stack.reads.list_events("tui-times", 1, 3)).events
    exact = from_timestamp(events[2].recorded_at)
    assert exact % 1_000_000, "recorded on a whole millisecond: run again"  # (1 in 10^6)
    pasted = format_rfc3339_ns(exact)  # as `ctx events` prints it
    backend = Backend(
        SessionsAppSettings(nats=settings.nats), query_address=f"127.0.0.1:{stack.query.port}"
    )
    app = JetsourceTui(backend, refresh_s=1.0)
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("c")
        scrubber = app.screen.query_one("#scrubber", Static)

        async def until(text: str) -> None:
            deadline = time.monotonic() + 15
            while text not in str(scrubber.content):
                assert time.monotonic() < deadline, f"{text!r} not in {scrubber.content!r}"
                await pilot.pause(0.02)

        await pilot.press("slash", *"tui-times", "enter")
        await until(f"version {version} of {version} (latest)")
        await pilot.press("t", *pasted, "enter")
        await until(f"version 3 of {version} (at {pasted})")
        await pilot.press("t", *format_rfc3339_ns(exact - 1), "enter")
        await until(f"version 2 of {version} (at {format_rfc3339_ns(exact - 1)})")
        whole = exact // NS * NS + NS  # the next whole second, written in +01:00
        local = datetime.fromtimestamp(whole // NS, timezone(timedelta(hours=1)))
        wanted = (await stack.reads.at_time("tui-times", whole)).context.version
        await pilot.press("t", *local.isoformat(), "enter")
        await until(f"version {wanted} of {version} (at {format_rfc3339_ns(whole)})")
