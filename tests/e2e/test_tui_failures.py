"""The TUI against failures no screen expects, headless with Textual's pilot and a real
NATS server: each ended the whole TUI with Textual's traceback before. A projector
setting that does not validate (read when the dead letters screen first reads), a client
TLS file that is not there (the omni and contexts screens), a process tree nested deeper
than Python's recursion limit or whose parents name each other in a loop, and any other
error of a screen's read: said in the screen's banner, and the TUI goes on. And a live
session followed through the process query service, said interrupted while its events
came."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Static, Tree

from jetsource.core.settings import GrpcClientSettings, TlsSettings
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.format import new_session_id
from jetsource.domains.sessions.ledger import Recorded
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.domain_views import DeadLettersScreen, OmniScreen
from jetsource.tui.lifecycle import Banner
from jetsource.tui.other_views import TREE_DEPTH, ContextsScreen, ProcessesScreen
from jetsource.tui.session_view import SessionScreen, SessionsScreen
from tests.e2e.test_tui import SIZE, app_settings, client, until  # noqa: F401  (fixtures)
from tests.infra import Server
from tests.integration.sessions.conftest import sessions_settings
from tests.integration.sessions.test_sessions_list_incremental import child, started

pytestmark = pytest.mark.e2e


def banner(app: JetsourceTui) -> str:
    b = app.screen.query_one(Banner)
    return str(b.content) if b.display else ""


async def test_a_projector_setting_that_does_not_validate_is_a_banner_naming_it(
    app_settings: SessionsAppSettings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JETSOURCE_PROJECTOR__DLQ_STREAM", "")
    app = JetsourceTui(Backend(app_settings), refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DeadLettersScreen))
        await until(pilot, lambda: "JETSOURCE_PROJECTOR__DLQ_STREAM" in banner(app))
        assert "is not a stream name" in banner(app)
        await pilot.press("s")  # the TUI goes on
        await until(pilot, lambda: isinstance(app.screen, SessionsScreen))
    assert app._exception is None


async def test_a_client_tls_file_that_is_not_there_is_a_banner_on_omni_and_contexts(
    app_settings: SessionsAppSettings,  # noqa: F811
    tmp_path: Path,
) -> None:
    gone = tmp_path / "no-such-ca.pem"
    settings = app_settings.model_copy(
        update={"client": GrpcClientSettings(tls=TlsSettings(ca_file=gone))}
    )
    backend = Backend(settings, query_address="127.0.0.1:1", omni_address="127.0.0.1:2")
    app = JetsourceTui(backend, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, OmniScreen))
        await until(pilot, lambda: str(gone) in banner(app))
        assert "omni query service" in banner(app) and "TLS__CA_FILE" in banner(app)
        await pilot.press("c", "slash", *"story-1", "enter")
        await until(pilot, lambda: isinstance(app.screen, ContextsScreen))
        await until(pilot, lambda: "context query service" in banner(app))
        assert str(gone) in banner(app)
    assert app._exception is None


async def test_a_tree_nested_past_the_recursion_limit_and_a_parent_loop_are_drawn(
    client: SessionsClient,  # noqa: F811
    app_settings: SessionsAppSettings,  # noqa: F811
) -> None:
    sid = new_session_id()
    chain = [child(sid if i == 0 else f"{sid}-d{i - 1}", f"{sid}-d{i}") for i in range(1050)]
    await client.writer.record([started(sid, "deep")])
    for at in range(0, len(chain), 400):
        await client.writer.record(chain[at : at + 400])
    # two processes naming each other as parent: no root leads to them
    await client.writer.record([child("loop-b", "loop-a"), child("loop-a", "loop-b")])
    app = JetsourceTui(Backend(app_settings), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ProcessesScreen))
        shown = app.screen
        assert isinstance(shown, ProcessesScreen)
        await until(pilot, lambda: shown.loaded > 0)
        tree = app.screen.query_one("#tree", Tree)
        await pilot.pause(0.1)
        found: dict[str, tuple[int, str]] = {}
        stack: list[tuple[Any, int]] = [(n, 0) for n in tree.root.children]
        while stack:
            node, depth = stack.pop()
            found[node.data] = (depth, str(node.label))
            stack.extend((c, depth + 1) for c in node.children)
        assert len(found) == 1 + 1050 + 2
        depth, label = found[f"{sid}-d1049"]
        assert depth == TREE_DEPTH and "nested 1050 deep" in label
        assert {"loop-a", "loop-b"} <= set(found)
    assert app._exception is None


async def test_any_other_error_of_a_read_is_said_in_the_banner_and_the_tui_goes_on(
    app_settings: SessionsAppSettings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JETSOURCE_DEBUG", raising=False)
    backend = Backend(app_settings)

    async def broken() -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(backend, "processes", broken)
    app = JetsourceTui(backend, refresh_s=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await until(pilot, lambda: "unexpected RuntimeError: boom" in banner(app))
        await pilot.pause(0.5)  # read again on each tick, still no crash
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SessionsScreen) and app.screen.loaded > 0)
    assert app._exception is None


async def test_a_live_session_followed_without_recording_times_stays_active(
    client: SessionsClient,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    nats_server: Server,
    unique: str,
) -> None:
    """``JETSOURCE_SESSIONS__READER=query``: the query reader's follow (WatchSession)
    gives each event a recording time of 0 (``QueryReader.follow``: ``Recorded(event,
    0, 0)``), so the header said interrupted ``interrupted_after_s`` after the session
    opened however many events came. The stream reader's follow stands in for it here,
    its times set to 0 as the query reader's are."""
    reads = sessions_settings(nats_server.url, unique, interrupted_after_s=0.6)
    backend = Backend(reads)
    follow = backend.follow

    async def as_the_query_reader(session_id: str, after_seq: int = 0) -> Any:
        async for r in follow(session_id, after_seq):
            yield Recorded(r.event, 0, 0)

    monkeypatch.setattr(backend, "follow", as_the_query_reader)
    s = Session(client.writer, "followed through the query service")
    await s.__aenter__()
    app = JetsourceTui(backend, refresh_s=0.5, open_session=s.id)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen.live)
        screen = app.screen
        assert isinstance(screen, SessionScreen)
        for i in range(1, 7):  # 1.2 s of events, each well within the 0.6 s quiet limit
            s.emit("scan_progress", {"files_scanned": i})
            await pilot.pause(0.2)
        await until(pilot, lambda: screen.state.scan.get("files_scanned") == 6)
        screen.render_header()
        header = str(screen.query_one("#header", Static).content)
        assert header.startswith("active"), header
        await s.close()
        await until(pilot, lambda: not screen.live)
    assert app._exception is None


async def test_a_page_of_text_in_the_seq_or_time_box_is_a_short_notice(
    client: SessionsClient,  # noqa: F811
    app_settings: SessionsAppSettings,  # noqa: F811
) -> None:
    """A paste of 20,000 characters into `g` (go to seq) or `t` (a context's time) was
    quoted whole in the error notice, which then covered the screen."""
    async with session(client.writer, "pasted") as s:
        s.emit("level_started", {"level": 0, "nodes": 1, "node_ids": ["a"]})
    app = JetsourceTui(Backend(app_settings, query_address="127.0.0.1:1"), open_session=s.id)
    async with app.run_test(size=SIZE) as pilot:
        await until(
            pilot, lambda: isinstance(app.screen, SessionScreen) and app.screen.position > 0
        )
        for box, keys in (("#seq-input", ("g",)), ("#time-input", ("escape", "c", "t"))):
            await pilot.press(*keys)
            await until(pilot, lambda: bool(app.screen.query(box)))  # noqa: B023
            app.screen.query_one(box, Input).value = "x" * 20_000
            await pilot.press("enter")
            await until(pilot, lambda: bool(app._notifications))
            notices = [n.message for n in app._notifications]
            app.clear_notifications()
            assert len(notices) == 1 and "xxx" in notices[0] and len(notices[0]) < 400, notices
    assert app._exception is None


async def test_a_session_being_read_says_so(
    client: SessionsClient,  # noqa: F811
    app_settings: SessionsAppSettings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A session of 50,000 events takes seconds to read (2.8 s here): the screen was
    blank meanwhile."""
    async with session(client.writer, "long") as s:
        s.emit("level_started", {"level": 0, "nodes": 1, "node_ids": ["a"]})
    backend = Backend(app_settings)
    read = backend.events
    go = asyncio.Event()

    async def slow(session_id: str) -> Any:
        await go.wait()
        return await read(session_id)

    monkeypatch.setattr(backend, "events", slow)
    app = JetsourceTui(backend, open_session=s.id)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SessionScreen))
        header = app.screen.query_one("#header", Static)
        await until(pilot, lambda: "reading the session" in str(header.content))
        go.set()
        await until(pilot, lambda: str(header.content).startswith("completed"))
    assert app._exception is None
