"""The TUI's identity detail read one GetIdentity page: an identity of more handles than
the server's page (1,000) showed that many, as if they were all. It now follows the
pages up to OmniScreen.HANDLES_AT_ONCE, says how many there are and how many are shown,
and n reads as many more. Against a real ingress (NATS, Valkey) with its max page size
lowered to 10 and HANDLES_AT_ONCE to 20: an identity of 25 handles, found by id and by
one of its handles."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from textual.widgets import Static

from jetsource.ingest.server import Ingest, build
from jetsource.ingest.settings import IngestSettings
from jetsource.projection.bootstrap import Projection
from jetsource.tui.app import JetsourceTui
from jetsource.tui.domain_views import OmniScreen
from tests.e2e.test_tui import SIZE, until
from tests.e2e.test_tui_omni import backend_for
from tests.infra import Server
from tests.integration.omni.harness import caught_up, omni_settings, projector

pytestmark = pytest.mark.e2e


@pytest.fixture
def isettings(nats_server: Server, valkey_server: Server, unique: str) -> IngestSettings:
    settings = omni_settings(nats_server.url, valkey_server.url, unique)
    return settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"max_page_size": 10})}
    )


@pytest.fixture
async def ingest(isettings: IngestSettings) -> AsyncIterator[Ingest]:
    service = await build(isettings)
    yield service
    await service.stop(0)


@pytest.fixture
async def projection(isettings: IngestSettings, ingest: Ingest) -> AsyncIterator[Projection]:
    async with projector(isettings) as p:
        yield p


async def test_an_identity_of_more_handles_than_a_page_is_paged_and_counted(
    ingest: Ingest,
    projection: Projection,
    isettings: IngestSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(OmniScreen, "HANDLES_AT_ONCE", 20, raising=False)
    person = await ingest.identities.create("Many", actor="test")
    numbers = [f"4915100000{i:03d}" for i in range(25)]
    for n in numbers:
        await ingest.identities.link(person, "whatsapp", n, actor="test")
    await caught_up(projection)
    app = JetsourceTui(backend_for(isettings, f"127.0.0.1:{ingest.grpc.port}"), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("m")
        screen = app.screen
        assert isinstance(screen, OmniScreen)
        detail = screen.query_one("#detail", Static)
        for asked in (person, f"whatsapp:{numbers[7]}"):
            await pilot.press("i", *asked, "enter")
            await until(
                pilot, lambda: "Handles (25; the first 20 shown, n: more)" in str(detail.content)
            )
            shown = str(detail.content)
            assert f"whatsapp:{numbers[19]}" in shown and f"whatsapp:{numbers[20]}" not in shown
            await pilot.press("n")
            await until(pilot, lambda: "Handles (25)\n" in str(detail.content))
            assert all(f"whatsapp:{n}" in str(detail.content) for n in numbers)
            await pilot.press("n")  # nothing more: said, nothing changed
            await until(
                pilot, lambda: any("no identity with more" in n.message for n in app._notifications)
            )
            assert "Handles (25)\n" in str(detail.content)
        assert app.is_running


async def test_n_is_offered_only_while_a_page_token_goes_on(
    ingest: Ingest,
    projection: Projection,
    isettings: IngestSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The header offered "n: more" whenever the identity's handle_count (its first
    page's) exceeded the handles read, token or not: handles linked away while paging
    left it offering n, which then said there was nothing more. Now n is offered only
    with a next page token, the count is the last page's, and when it differs from the
    handles read (a handle linked in before where the paging was) both are said, n not
    offered."""
    monkeypatch.setattr(OmniScreen, "HANDLES_AT_ONCE", 20, raising=False)
    ids = ingest.identities
    person = await ids.create("Many", actor="test")
    other = await ids.create("Other", actor="test")
    numbers = [f"4915100000{i:03d}" for i in range(25)]
    for n in numbers:
        await ids.link(person, "whatsapp", n, actor="test")
    await caught_up(projection)
    app = JetsourceTui(backend_for(isettings, f"127.0.0.1:{ingest.grpc.port}"), refresh_s=0.5)

    def nothing_more() -> int:
        return sum("no identity with more" in n.message for n in app._notifications)

    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("m")
        screen = app.screen
        assert isinstance(screen, OmniScreen)
        detail = screen.query_one("#detail", Static)
        await pilot.press("i", *person, "enter")
        await until(
            pilot, lambda: "Handles (25; the first 20 shown, n: more)" in str(detail.content)
        )
        # Two handles past where the paging is linked away: the last page holds 3.
        for n in numbers[21:23]:
            await ids.link(other, "whatsapp", n, actor="test")
        await caught_up(projection)
        await pilot.press("n")
        await until(pilot, lambda: f"whatsapp:{numbers[24]}" in str(detail.content))
        shown = str(detail.content)
        assert "Handles (23)\n" in shown and "n: more" not in shown, shown
        before = nothing_more()
        await pilot.press("n")
        await until(pilot, lambda: nothing_more() > before)

        # A handle linked in before where the paging is: the count says it, the pages
        # had passed it; no n offered.
        await pilot.press("i", *person, "enter")
        await until(
            pilot, lambda: "Handles (23; the first 20 shown, n: more)" in str(detail.content)
        )
        await ids.link(person, "whatsapp", "49151000000050", actor="test")
        await caught_up(projection)
        await pilot.press("n")
        await until(pilot, lambda: f"whatsapp:{numbers[24]}" in str(detail.content))
        shown = str(detail.content)
        assert "Handles (24; 23 shown)\n" in shown and "n: more" not in shown, shown
        assert app.is_running
