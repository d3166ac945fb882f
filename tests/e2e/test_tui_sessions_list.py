"""The sessions list of the TUI on a ledger that grows while it is shown, headless with
Textual's pilot against a real NATS server: each refresh reads only what was appended
since the one before (nothing but the stream's mark when nothing was), and the rows it
shows are the ones a whole read of the ledger gives (``jetsource sessions list``)."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.ledger import LedgerReader
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.session_view import SessionsScreen
from tests.e2e.test_tui import SIZE, app_settings, client, until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


def rows(table: DataTable[object]) -> list[tuple[str, str, str]]:
    """(session, status, events) of every row, top to bottom."""
    out = []
    for i in range(table.row_count):
        sid, status, _command, _started, _duration, events = table.get_row_at(i)
        out.append((str(sid), str(status), str(events)))
    return out


async def test_the_list_refreshed_as_the_ledger_grows_reads_only_what_was_appended(
    client: SessionsClient,  # noqa: F811
    app_settings: SessionsAppSettings,  # noqa: F811
) -> None:
    async with session(client.writer, "first") as s:
        s.emit("scan_progress", {"files_scanned": 1})
    backend = Backend(app_settings)
    app = JetsourceTui(backend, refresh_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        listing = app.screen
        assert isinstance(listing, SessionsScreen)
        table = listing.query_one("#sessions", DataTable)
        await until(pilot, lambda: table.row_count == 1)
        reader = (await backend.client()).sessions.reader
        assert isinstance(reader, LedgerReader)
        tails: list[str] = []  # the sessions whose histories were read for their tails
        tail, tail_at = reader.tail, reader.tail_at

        async def counted(process_id: str) -> tuple[int, int]:
            tails.append(process_id)
            return await tail(process_id)

        async def counted_at(process_id: str) -> tuple[int, int, int]:
            tails.append(process_id)
            return await tail_at(process_id)

        reader.tail = counted  # type: ignore[method-assign]
        reader.tail_at = counted_at  # type: ignore[method-assign]
        reads = listing.loaded
        await until(pilot, lambda: listing.loaded >= reads + 5)
        assert tails == [], "refreshes with nothing appended read sessions' tails"

        live = []
        for round_ in range(6):
            async with session(client.writer, f"round {round_}") as done:
                done.emit("scan_progress", {"files_scanned": round_})
            one = await Session(client.writer, f"live {round_}").__aenter__()
            live.append(one)
            for earlier in live[:-1]:
                earlier.emit("scan_progress", {"files_scanned": round_})
                await earlier.flush()
            if round_ % 2:
                await live.pop(0).close()
            await one.flush()
            whole = await client.sessions.list_sessions()
            want = [(r.session_id, r.status, str(r.event_count)) for r in whole]
            await until(pilot, lambda want=want: rows(table) == want)  # type: ignore[misc]
        assert s.id not in tails, "a session that got nothing was read again"
        assert len(set(tails)) == len(tails), "a session's history was read twice"
        for one in live:
            await one.close()
        whole = await client.sessions.list_sessions()
        want = [(r.session_id, r.status, str(r.event_count)) for r in whole]
        await until(pilot, lambda: rows(table) == want)
        tails.clear()
        reads = listing.loaded
        await until(pilot, lambda: listing.loaded >= reads + 5)
        assert tails == [] and rows(table) == want
