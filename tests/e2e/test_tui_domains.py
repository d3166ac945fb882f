"""The TUI with a developer's own domain on the engine (tests/notes_domain.py, its own
stream and events), against real NATS: its dead letters are listed whether or not the
TUI process registers the domain (JETSOURCE_PROJECTOR__DOMAINS), a domains setting
that does not load is said as that setting (not as NATS being down), and a letter's
event is shown decoded: its envelope always, its payload by the domain's codec when
the TUI has it, as hex when it does not."""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncIterator

import pytest
from google.protobuf import wrappers_pb2
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import RawMessage
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.tui.app import JetsourceTui
from jetsource.tui.domain_views import DeadLettersScreen
from tests.e2e.test_tui import SIZE, until
from tests.e2e.test_tui_deadletters import backend_for
from tests.notes_domain import NOTES, notes_domain
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.e2e


@pytest.fixture
async def notes(
    settings: JetsourceSettings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Projection]:
    """A projection of the notes domain alone, registered as a developer does: a module
    exporting REGISTRY, named by JETSOURCE_PROJECTOR__DOMAINS (its settings')."""
    module = types.ModuleType(f"notes_domains_{unique}")
    module.REGISTRY = DomainRegistry([notes_domain(unique)])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    p = await open_projection(projector_settings(settings, unique, domains=module.__name__))
    yield p
    await p.close()


async def stored(p: Projection, aggregate_id: str, text: str) -> RawMessage:
    """A note appended to the notes stream, as the stream holds it."""
    store = p.domain_store("notes")
    event = NewEvent(
        wrappers_pb2.StringValue(value=text),
        correlation_id="corr-1",
        metadata={"actor": "dev", "tool": "cli\x1b[2J"},
    )
    await store.append(aggregate_id, [event], 0)
    subject = f"{store.settings.subject_prefix}.{aggregate_id}.>"
    async for raw in jsapi.direct_get_batch(store._replies, store.settings.stream, subject, 1, 5):
        return raw
    raise AssertionError("not stored")


async def open_letters(app: JetsourceTui, pilot: Pilot[None], rows: int) -> DeadLettersScreen:
    await pilot.press("d")
    screen = app.screen
    assert isinstance(screen, DeadLettersScreen)
    table = screen.query_one("#rows", DataTable)
    summary = screen.query_one("#summary", Static)
    await until(pilot, lambda: table.row_count == rows and "loading" not in str(summary.content))
    return screen


async def test_a_tui_without_the_domain_lists_its_dead_letters(
    notes: Projection, settings: JetsourceSettings, unique: str
) -> None:
    """The TUI started with the default JETSOURCE_PROJECTOR__DOMAINS (the built-in
    domains): it said "no dead letters: every read model applied every event"."""
    raw = await stored(notes, "n1", "a note")
    await notes.dead_letters.publish(notes.spec(NOTES, 1), "n1", raw, "boom", 3)
    app = JetsourceTui(backend_for(projector_settings(settings, unique)), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_letters(app, pilot, 1)
        table = screen.query_one("#rows", DataTable)
        row = [str(c) for c in table.get_row(next(iter(table.rows)))]
        assert row[1:6] == [NOTES, "v1", str(raw.seq), "n1", "3"]
        assert "1 dead letter" in str(screen.query_one("#summary", Static).content)


async def test_a_domains_setting_that_does_not_load_is_said_as_that_setting(
    settings: JetsourceSettings, unique: str
) -> None:
    """JETSOURCE_PROJECTOR__DOMAINS naming a module the TUI's environment lacks: the
    banner said "NATS at ... is not reachable (DomainsError: ...) (JETSOURCE_NATS__URL)"
    while NATS was up."""
    missing = projector_settings(settings, unique, domains=f"not_installed_{unique}")
    app = JetsourceTui(backend_for(missing), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: bool(banner.display and str(banner.content)))
        said = str(banner.content)
        assert f"JETSOURCE_PROJECTOR__DOMAINS='not_installed_{unique}'" in said
        assert "does not load" in said
        assert "not reachable" not in said and "JETSOURCE_NATS__URL" not in said
        assert app.is_running


async def shown(app: JetsourceTui, pilot: Pilot[None], row: int, dlq_seq: int) -> str:
    """The detail of the table's ``row`` (0 first) once Enter drew it."""
    await pilot.press("home", *["down"] * row, "enter")
    detail = app.screen.query_one("#detail", Static)
    await until(pilot, lambda: f"Dead letter {dlq_seq}\n" in str(detail.content))
    return str(detail.content)


async def test_a_letters_event_is_shown_decoded_by_its_domains_codec_or_as_hex(
    notes: Projection, settings: JetsourceSettings, unique: str
) -> None:
    """The event of a letter was its envelope's protobuf bytes read as UTF-8 text
    (``\\x18\\x010\\x01z``, then the payload's strings among blank lines, U+FFFD for
    what was not UTF-8). Now: the envelope's fields, then the payload by the domain's
    codec (a TUI that registers it), as hex saying why (one that does not; a payload
    that does not decode: the poison itself)."""
    from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope

    raw = await stored(notes, "n1", "a note\x1b[2J")
    spec = notes.spec(NOTES, 1)
    await notes.dead_letters.publish(spec, "n1", raw, "model raised", 3)
    bad = EventEnvelope(schema_version=1, aggregate_version=2, payload=b"\x0a\xff\xff")
    subject = raw.subject.replace(".n1.", ".n2.")
    poison = RawMessage(subject, raw.seq + 1, 0, {}, bad.SerializeToString())
    await notes.dead_letters.publish(spec, "n2", poison, "payload does not parse", 1)
    letters = await notes.dead_letters.list()

    mine = JetsourceTui(backend_for(notes.settings), refresh_s=0.5)
    async with mine.run_test(size=SIZE) as pilot:
        await open_letters(mine, pilot, 2)
        text = await shown(mine, pilot, 0, letters[0].dlq_seq)
        assert "type          NoteAdded v1" in text
        assert "aggregate     n1 version 1" in text
        assert "correlation   corr-1" in text
        assert "metadata      tool: cli\\x1b[2J" in text
        assert "sealed        personal fields of 1 subject(s)" in text  # the actor
        assert 'value: "a note\\033[2J"' in text and "\x1b" not in text
        assert "\\x18" not in text and "\ufffd" not in text
        text = await shown(mine, pilot, 1, letters[1].dlq_seq)
        assert "aggregate     n2 version 2" in text
        assert "does not decode: NoteAdded v1: payload does not parse" in text
        assert "0000  0a ff ff" in text
        assert mine.is_running

    theirs = JetsourceTui(backend_for(projector_settings(settings, unique)), refresh_s=0.5)
    async with theirs.run_test(size=SIZE) as pilot:
        await open_letters(theirs, pilot, 2)
        text = await shown(theirs, pilot, 0, letters[0].dlq_seq)
        assert "type          NoteAdded v1" in text
        assert "no codec for NoteAdded v1 here: JETSOURCE_PROJECTOR__DOMAINS" in text
        assert "0000  0a 0a 61 20 6e 6f 74 65 1b 5b 32 4a" in text
        assert "..a note.[2J" in text and "\x1b" not in text


async def test_a_domains_setting_naming_an_empty_registry_is_said_as_that_setting(
    settings: JetsourceSettings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry with no domain in it: the banner said "NATS at ... is not reachable
    (ValueError: no domain is registered) (JETSOURCE_NATS__URL)" (the CLI "refused",
    exit 1)."""
    module = types.ModuleType(f"no_domains_{unique}")
    module.REGISTRY = DomainRegistry([])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    empty = projector_settings(settings, unique, domains=module.__name__)
    app = JetsourceTui(backend_for(empty), refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: bool(banner.display and str(banner.content)))
        said = str(banner.content)
        assert f"JETSOURCE_PROJECTOR__DOMAINS='no_domains_{unique}'" in said
        assert "has no domain" in said and "not reachable" not in said
