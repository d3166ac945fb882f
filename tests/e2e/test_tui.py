"""The TUI's contract tests, headless with Textual's pilot against a real NATS server
(sessions on the process ledger's stream, emitted by the session emitter while the TUI
follows). Each main screen's SVG screenshot is written by these tests: to
docs/tui/ when JETSOURCE_TUI_SCREENSHOTS=docs/tui (how the checked-in ones were made),
else to a temporary directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, ProgressBar, Static, Tree

from jetsource.core.settings import NatsSettings
from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.progress import COMPLETE, RUNNING, WAITING
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.session_view import SessionScreen, SessionsScreen
from tests.infra import Server
from tests.integration.sessions.conftest import provision, sessions_settings

pytestmark = pytest.mark.e2e
SIZE = (140, 44)


@pytest.fixture
async def app_settings(nats_server: Server, unique: str) -> SessionsAppSettings:
    s = sessions_settings(nats_server.url, unique)
    await provision(s)
    return s


@pytest.fixture
async def client(app_settings: SessionsAppSettings) -> AsyncIterator[SessionsClient]:
    async with open_sessions(app_settings) as c:
        yield c


def screenshot(app: JetsourceTui, name: str, tmp_path: Path) -> Path:
    where = Path(os.environ.get("JETSOURCE_TUI_SCREENSHOTS", str(tmp_path)))
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.svg"
    path.write_text(app.export_screenshot(title=f"jetsource tui: {name}"))
    assert path.stat().st_size > 1000 and "<svg" in path.read_text()[:200]
    return path


async def until(pilot: Pilot[None], check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the TUI did not get there in time"
        await pilot.pause(0.02)


def cell(table: DataTable[object], row: str, column: int) -> str:
    try:
        return str(table.get_row(row)[column])
    except Exception:
        return ""


def text_of(widget: Static) -> str:
    return str(widget.content)


async def test_provider_sent_then_received_moves_a_node_from_waiting_to_complete(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    s = Session(client.writer, "context generate", argv=["generate", "--all"])
    await s.__aenter__()
    app = JetsourceTui(Backend(app_settings), refresh_s=0.5, open_session=s.id)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen.live)
        screen = app.screen
        assert isinstance(screen, SessionScreen)
        nodes = screen.query_one("#nodes", DataTable)
        s.emit("level_started", {"level": 0, "nodes": 2, "node_ids": ["intro", "outro"]})
        await until(pilot, lambda: cell(nodes, "intro", 2) == WAITING)
        s.emit("provider_request_sent", {"request_id": "r1", "provider": "anthropic",
                                          "node_id": "intro"})  # fmt: skip
        await until(pilot, lambda: cell(nodes, "intro", 2) == RUNNING)
        assert cell(nodes, "intro", 3) == "anthropic"
        s.emit("provider_response_received", {"request_id": "r1", "provider": "anthropic"})
        await until(pilot, lambda: cell(nodes, "intro", 2) == COMPLETE)
        assert cell(nodes, "outro", 2) == WAITING
        s.emit("queue_stats", {"pending": 1, "in_flight": 0, "completed": 1})
        s.emit("scan_progress", {"files_scanned": 40, "files_total": 120})
        await until(pilot, lambda: "40/120" in text_of(screen.query_one("#stats", Static)))
        screenshot(app, "session-live", tmp_path)
        await s.close()
        await until(pilot, lambda: not screen.live)
        assert "completed" in text_of(screen.query_one("#header", Static))


async def test_node_generation_failed_renders_the_failure_detail_with_its_message(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    s = Session(client.writer, "context generate")
    await s.__aenter__()
    app = JetsourceTui(Backend(app_settings), refresh_s=0.5, open_session=s.id)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen.live)
        screen = app.screen
        assert isinstance(screen, SessionScreen)
        s.emit("level_started", {"level": 1, "node_ids": ["api-docs"]})
        s.emit("node_generation_started", {"node_id": "api-docs", "level": 1})
        error = "context window exceeded (212k > 200k)"
        failed = {"node_id": "api-docs", "level": 1, "error": error}
        s.emit("node_generation_failed", failed)
        failures = screen.query_one("#failures", Static)
        await until(pilot, lambda: "context window exceeded" in text_of(failures))
        assert "api-docs" in text_of(failures)
        nodes = screen.query_one("#nodes", DataTable)
        assert cell(nodes, "api-docs", 2) == "failed"
        assert "212k" in cell(nodes, "api-docs", 5)
        screenshot(app, "session-failure", tmp_path)
        await s.close()


async def test_level_started_and_completed_update_the_progress_model(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    s = Session(client.writer, "context generate")
    await s.__aenter__()
    app = JetsourceTui(Backend(app_settings), refresh_s=0.5, open_session=s.id)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen.live)
        screen = app.screen
        assert isinstance(screen, SessionScreen)
        s.emit("level_started", {"level": 0, "nodes": 3, "node_ids": ["a", "b", "c"]})
        await until(pilot, lambda: bool(screen.query("#level-0")))
        bar = screen.query_one("#level-0", ProgressBar)
        await until(pilot, lambda: (bar.total, bar.progress) == (3, 0))
        s.emit("node_generation_completed", {"node_id": "a"})
        s.emit("node_skipped", {"node_id": "b"})
        await until(pilot, lambda: bar.progress == 2)
        s.emit("level_completed", {"level": 0, "completed": 3, "failed": 0})
        await until(pilot, lambda: bar.progress == 3)
        level = screen.state.level(0)
        assert level is not None and level.status == COMPLETE
        await s.close()


async def test_the_history_view_lists_opens_and_replays_a_session_from_storage(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    async with session(client.writer, "context generate", argv=["gen"]) as done:
        done.emit("plan_constructed", {"levels": 1, "nodes": 2,
                                       "plan": [{"level": 0, "node_ids": ["x", "y"]}]})  # fmt: skip
        done.emit("level_started", {"level": 0})
        done.emit("node_generation_completed", {"node_id": "x"})
        done.emit("node_generation_failed", {"node_id": "y", "error": "timeout"})
        done.emit("level_completed", {"level": 0})
    async with session(client.writer, "scan"):
        pass
    app = JetsourceTui(Backend(app_settings), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        listing = app.screen
        assert isinstance(listing, SessionsScreen)
        table = listing.query_one("#sessions", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        assert cell(table, done.id, 1) == "completed"
        assert cell(table, done.id, 2) == "context generate"
        assert cell(table, done.id, 5) == "7"
        screenshot(app, "sessions", tmp_path)
        await pilot.press("slash", *"status:completed scan", "enter")  # filter and search
        await until(pilot, lambda: table.row_count == 1)
        assert cell(table, done.id, 1) == ""  # the other one is left
        await pilot.press("slash", "ctrl+u", "enter")  # clear the filter
        await until(pilot, lambda: table.row_count == 2)
        table.focus()
        table.move_cursor(row=table.get_row_index(done.id))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, SessionScreen))
        screen = app.screen
        assert isinstance(screen, SessionScreen)
        await until(pilot, lambda: screen.position == 7)
        final = await client.sessions.replay(done.id)
        assert screen.state == final and not screen.live
        log = screen.query_one("#log", DataTable)
        assert log.row_count == 7
        await pilot.press("home")
        assert screen.position == 0 and screen.query_one("#nodes", DataTable).row_count == 0
        await pilot.press("right", "right", "right")  # started, plan, level_started
        assert screen.state.seq == 3
        assert cell(screen.query_one("#nodes", DataTable), "x", 2) == WAITING
        await pilot.press("g")
        await pilot.press(*"5", "enter")
        assert screen.state.seq == 5 and screen.state == await client.sessions.replay(done.id, 5)
        screen.speed = 200
        await pilot.press("space")
        await until(pilot, lambda: screen.position == 7 and not screen.playing)
        assert screen.state == final
        screenshot(app, "session-replay", tmp_path)
        await pilot.press("escape")
        assert isinstance(app.screen, SessionsScreen)


async def test_the_processes_view_shows_the_ledger_tree_live(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    from google.protobuf import struct_pb2

    from jetsource._gen.process.v1 import events_pb2

    s = Session(client.writer, "context generate")
    await s.__aenter__()
    app = JetsourceTui(Backend(app_settings), refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        tree = app.screen.query_one("#tree", Tree)
        await until(pilot, lambda: any(n.data == s.id for n in tree.root.children))
        data = struct_pb2.Struct()
        data.update({"kind": "provider", "name": "anthropic call"})
        await client.writer.record([events_pb2.CanonicalEvent(
            process_id=f"{s.id}-c1", parent_process_id=s.id, event_type="process_started",
            data=data)])  # fmt: skip

        def child_shown() -> bool:
            roots = [n for n in tree.root.children if n.data == s.id]
            return bool(roots) and any(c.data == f"{s.id}-c1" for c in roots[0].children)

        await until(pilot, child_shown)
        label = str(next(n for n in tree.root.children if n.data == s.id).label)
        assert "context generate" in label and "active" in label
        screenshot(app, "processes", tmp_path)
        await s.close()


async def test_a_stack_that_is_down_shows_a_banner_and_nothing_crashes(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    settings = SessionsAppSettings(nats=NatsSettings(url=f"nats://127.0.0.1:{port}"))
    app = JetsourceTui(Backend(settings, connect_timeout_s=0.3), refresh_s=0.3)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: banner.display and "not reachable" in text_of(banner))
        await pilot.press("p")
        banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: banner.display and "not reachable" in text_of(banner))
        await pilot.press("c")
        await pilot.press("s")
        assert app.is_running
        screenshot(app, "stack-down", tmp_path)
