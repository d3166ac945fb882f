"""The TUI's Messages (omni) screen against a real ingress (NATS, Valkey, the omni read
models projected in this process): recent events newest first, one event in full with
its processing status and raw payload, an identity with its handles, an empty ingress,
a query service that is not there (and comes back), and a hostile sender name."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from textual.widgets import DataTable, Static

from jetsource.core.settings import NatsSettings
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.ingest.server import Ingest, build
from jetsource.ingest.settings import IngestSettings
from jetsource.projection.bootstrap import Projection
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.domain_views import OmniScreen
from tests.e2e.test_tui import SIZE, until
from tests.e2e.test_tui_contexts_operator import drawn
from tests.fixtures.omni import HERE
from tests.infra import Server
from tests.integration.omni.harness import caught_up, headers_for, omni_settings, projector, route

pytestmark = pytest.mark.e2e


@pytest.fixture
def isettings(nats_server: Server, valkey_server: Server, unique: str) -> IngestSettings:
    return omni_settings(nats_server.url, valkey_server.url, unique)


@pytest.fixture
async def ingest(isettings: IngestSettings) -> AsyncIterator[Ingest]:
    service = await build(isettings)
    yield service
    await service.stop(0)


@pytest.fixture
async def projection(isettings: IngestSettings, ingest: Ingest) -> AsyncIterator[Projection]:
    async with projector(isettings) as p:
        yield p


async def post(ingest: Ingest, instance: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ingest.app), base_url="http://ingest"
    ) as http:
        r = await http.post(route(instance), content=body, headers=headers_for(instance, body))
        assert r.status_code == 200, r.text
        return r


def discord(name: str, text: str, message_id: str) -> bytes:
    doc = json.loads((HERE / "discord/text.json").read_text())
    doc["d"]["author"]["global_name"] = name
    doc["d"]["content"] = text
    doc["d"]["id"] = message_id
    return json.dumps(doc).encode()


def backend_for(isettings: IngestSettings, address: str) -> Backend:
    return Backend(
        SessionsAppSettings(nats=isettings.nats), connect_timeout_s=1.0, omni_address=address
    )


def screenshot(app: JetsourceTui, name: str, tmp_path: Path) -> None:
    where = Path(os.environ.get("JETSOURCE_TUI_SCREENSHOTS", str(tmp_path)))
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{name}.svg").write_text(app.export_screenshot(title=f"jetsource tui: {name}"))


async def test_recent_events_newest_first_one_in_full_and_an_identity_with_its_handles(
    ingest: Ingest, projection: Projection, isettings: IngestSettings, tmp_path: Path
) -> None:
    first = await post(ingest, "acme-cloud", (HERE / "whatsapp/cloud/text.json").read_bytes())
    hostile = "Evil\x1b[2J\x1b]0;pwned\x07"
    second = await post(
        ingest, "acme-bot", discord(hostile, "hi\x1b[31m red", "1313000000000000077")
    )
    await caught_up(projection)
    older = first.json()["events"][0]["id"]
    newer = second.json()["events"][0]["id"]
    app = JetsourceTui(backend_for(isettings, f"127.0.0.1:{ingest.grpc.port}"), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("m")
        screen = app.screen
        assert isinstance(screen, OmniScreen)
        table = screen.query_one("#rows", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        keys = [str(k.value) for k in table.rows]
        assert keys == [newer, older]  # newest first
        row = [str(c) for c in table.get_row(newer)]
        assert row[2:6] == ["discord", "acme-bot", "message", "inbound"], row
        assert "\\x1b[2J" in row[6] and "\x1b" not in row[6]  # the sender, escaped
        assert str(table.get_row(older)[7]).startswith("received")
        # the hostile string never reaches the terminal; it is shown as its escape
        await until(pilot, lambda: "Evil\\x1b[2J" in drawn(app))  # once drawn
        assert "\x1b" not in drawn(app)

        await pilot.press("enter")  # the cursor is on the newest
        detail = screen.query_one("#detail", Static)
        await until(pilot, lambda: f"Event {newer}" in str(detail.content))
        shown = str(detail.content)
        assert "Processing" in shown and "received" in shown and "attempts 0" in shown
        assert "Raw payload" in shown and "MESSAGE_CREATE" in shown  # the raw body's text
        assert "hi\\x1b[31m red" in shown and "\x1b" not in shown
        screenshot(app, "omni", tmp_path)

        got = await screen.backend.omni_event(newer)
        identity = got.event.event.sender_identity_id
        assert identity
        await pilot.press("i", *f"discord:{got.event.event.sender_handle}", "enter")
        await until(pilot, lambda: f"Identity {identity}" in str(detail.content))
        assert f"discord:{got.event.event.sender_handle}" in str(detail.content)
        assert "Handles (1)" in str(detail.content)
        await pilot.press("i", *identity, "enter")  # by its id: the same identity
        await until(pilot, lambda: "Handles (1)" in str(detail.content))
        await pilot.press("i", *"discord:nobody-at-all", "enter")
        await until(pilot, lambda: any("nobody-at-all" in n.message for n in app._notifications))
        assert app.is_running


async def test_an_ingress_with_no_events_says_so(
    ingest: Ingest, projection: Projection, isettings: IngestSettings
) -> None:
    app = JetsourceTui(backend_for(isettings, f"127.0.0.1:{ingest.grpc.port}"), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("m")
        summary = app.screen.query_one("#summary", Static)
        await until(pilot, lambda: "no messages" in str(summary.content))
        assert app.screen.query_one("#rows", DataTable).row_count == 0


async def test_an_omni_service_that_is_not_there_is_a_banner_and_is_picked_up_when_it_starts(
    isettings: IngestSettings,
) -> None:
    from jetsource.devstack.servers import free_port

    port = free_port()
    app = JetsourceTui(backend_for(isettings, f"127.0.0.1:{port}"), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("m")
        banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: banner.display and "UNAVAILABLE" in str(banner.content))
        assert f"omni query service at 127.0.0.1:{port}" in str(banner.content)
        assert "JETSOURCE_INGEST__GRPC_PORT" in str(banner.content)
        assert app.is_running
        # the ingress starts on that port; no key is pressed
        started = isettings.model_copy(
            update={"ingest": isettings.ingest.model_copy(update={"grpc_port": port})}
        )
        service = await build(started)
        try:
            await post(service, "acme-cloud", (HERE / "whatsapp/cloud/text.json").read_bytes())
            async with projector(started) as p:
                await caught_up(p)
                table = app.screen.query_one("#rows", DataTable)
                await until(pilot, lambda: not banner.display and table.row_count == 1, 20)
        finally:
            await service.stop(0)


def test_the_omni_address_is_the_ingress_grpc_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SessionsAppSettings(nats=NatsSettings(url="nats://127.0.0.1:1"))
    monkeypatch.delenv("JETSOURCE_INGEST__GRPC_HOST", raising=False)
    monkeypatch.delenv("JETSOURCE_INGEST__GRPC_PORT", raising=False)
    assert Backend(settings).omni_address == "127.0.0.1:50054"
    monkeypatch.setenv("JETSOURCE_INGEST__GRPC_HOST", "0.0.0.0")
    monkeypatch.setenv("JETSOURCE_INGEST__GRPC_PORT", "50999")
    assert Backend(settings).omni_address == "127.0.0.1:50999"
    assert Backend(settings, omni_address="omni.example:443").omni_address == "omni.example:443"
