"""The TUI's Dead letters screen against real NATS: what `jetsource projector dlq list`
lists (a real poison filed by a real projector worker, and a letter with a hostile
reason), one letter in full, the empty state, and NATS going away and coming back."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage, RawMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.domain_views import DeadLettersScreen
from tests.e2e.test_tui import SIZE, until
from tests.e2e.test_tui_contexts_operator import drawn
from tests.infra import start_nats
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.e2e


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=3))
    yield p
    await p.model("context", 1).drop()
    await p.close()


def backend_for(p: ProjectorSettings) -> Backend:
    return Backend(SessionsAppSettings(nats=p.nats), connect_timeout_s=1.0, projector=p)


def screenshot(app: JetsourceTui, name: str, tmp_path: Path) -> None:
    where = Path(os.environ.get("JETSOURCE_TUI_SCREENSHOTS", str(tmp_path)))
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{name}.svg").write_text(app.export_screenshot(title=f"jetsource tui: {name}"))


async def poison(p: Projection, story: str) -> int:
    """An event no read model can apply (a hostile publisher's bytes), filed in the
    dead letters by a real worker of the context model."""
    subject = f"{p.store.settings.subject_prefix}.{story}.ContextCreated"
    ack = await jsapi.publish(p.store._replies, OutMessage(subject, b"{not json", {}), 5.0)
    worker = Worker(p.nc, p.store, p.model("context", 1), p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)
    return ack.seq


async def test_dead_letters_are_listed_as_dlq_list_has_them_and_one_is_shown_in_full(
    projection: Projection, tmp_path: Path
) -> None:
    seq = await poison(projection, "poisoned-story")
    hostile = "bad\x1b[2J\x1b]0;pwned\x07 reason"
    await projection.dead_letters.publish(
        projection.spec("context", 1),
        "hostile-story",
        RawMessage("x.hostile-story.T", seq + 1000, 0, {}, b'{"a": "\x1b[31m"}'),
        hostile,
        7,
    )
    letters = await admin.dlq_list(projection)  # what `projector dlq list` prints
    assert len(letters) == 2
    app = JetsourceTui(backend_for(projection.settings), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        screen = app.screen
        assert isinstance(screen, DeadLettersScreen)
        table = screen.query_one("#rows", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        assert [int(str(k.value)) for k in table.rows] == [d.dlq_seq for d in letters]
        real = [str(c) for c in table.get_row(str(letters[0].dlq_seq))]
        first = letters[0]
        assert real[:6] == [
            str(first.dlq_seq), "context", "v1", str(seq), "poisoned-story", str(first.tries)
        ]  # fmt: skip
        assert letters[0].reason[:40] in real[7]
        bad = [str(c) for c in table.get_row(str(letters[1].dlq_seq))]
        assert bad[4] == "hostile-story" and bad[5] == "7"
        assert bad[7] == "bad\\x1b[2J\\x1b]0;pwned\\x07 reason"
        await until(pilot, lambda: "bad\\x1b[2J" in drawn(app))  # once drawn
        assert "\x1b" not in drawn(app)
        summary = str(screen.query_one("#summary", Static).content)
        assert "2 dead letters" in summary and "dlq retry --seq N" in summary

        await pilot.press("down", "enter")
        detail = screen.query_one("#detail", Static)
        await until(pilot, lambda: f"Dead letter {letters[1].dlq_seq}" in str(detail.content))
        shown = str(detail.content)
        assert "hostile-story" in shown and "context v1" in shown
        assert '{"a": "\\x1b[31m"}' in shown and "\x1b" not in shown  # the stored bytes
        assert f"jetsource projector dlq retry --seq {letters[1].dlq_seq}" in shown
        await pilot.press("up", "enter")
        await until(pilot, lambda: f"Dead letter {letters[0].dlq_seq}" in str(detail.content))
        assert "{not json" in str(detail.content)
        screenshot(app, "dead-letters", tmp_path)
    assert len(await admin.dlq_list(projection)) == 2  # read-only: nothing retried


async def test_no_dead_letters_says_so(projection: Projection) -> None:
    app = JetsourceTui(backend_for(projection.settings), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        summary = app.screen.query_one("#summary", Static)
        await until(pilot, lambda: "no dead letters" in str(summary.content))
        assert app.screen.query_one("#rows", DataTable).row_count == 0


async def test_nats_going_away_is_a_banner_naming_it_and_the_list_comes_back(
    settings: JetsourceSettings, tmp_path: Path, unique: str
) -> None:
    """Its own NATS server (the session's shared one is left alone); the session's Valkey
    (a worker reads its model's birth mark there before it takes an event)."""
    server = start_nats(tmp_path)
    try:
        base = settings.model_copy(update={"nats": NatsSettings(url=server.url)})
        p = await open_projection(projector_settings(base, unique, max_deliver=3))
        try:
            await poison(p, "story-a")
        finally:
            await p.close()
        app = JetsourceTui(backend_for(projector_settings(base, unique)), refresh_s=0.3)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("d")
            table = app.screen.query_one("#rows", DataTable)
            banner = app.screen.query_one("#banner", Static)
            await until(pilot, lambda: table.row_count == 1)
            server.stop()
            await until(pilot, lambda: banner.display and "NATS at" in str(banner.content), 30)
            assert app.is_running and table.row_count == 1  # what was shown stays
            server.restart()
            await until(pilot, lambda: not banner.display, 30)
            assert table.row_count == 1
    finally:
        server.stop()
