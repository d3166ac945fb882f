"""The processes screen of the TUI (``p``) on a ledger that grows while it is shown,
headless with Textual's pilot against a real NATS server: a refresh reads only what was
appended since the one before (nothing but the stream's mark when nothing was: no
process's lifecycle, no running session's history), and the tree it shows is the one a
whole read of the ledger gives; a prune makes the next refresh read whole."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import Tree

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.format import new_session_id
from jetsource.domains.sessions.ledger import LedgerReader, ProcessSummary
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.app import JetsourceTui
from jetsource.tui.backend import Backend
from jetsource.tui.other_views import ProcessesScreen
from tests.e2e.test_tui import SIZE, app_settings, client, until  # noqa: F401  (fixtures)
from tests.integration.sessions.test_processes_incremental import whole
from tests.integration.sessions.test_sessions_list_incremental import child, ended, started

pytestmark = pytest.mark.e2e


def shown(tree: Tree[str]) -> list[tuple[int, str, str]]:
    """(depth, process id, status word) of every node, in drawing order."""
    out: list[tuple[int, str, str]] = []

    def walk(node: Any, depth: int) -> None:
        for c in node.children:
            label = str(c.label)
            status = label.split("] ", 1)[1].split()[0] if "] " in label else ""
            out.append((depth, str(c.data), status))
            walk(c, depth + 1)

    walk(tree.root, 0)
    return out


def expected(procs: dict[str, ProcessSummary]) -> list[tuple[int, str, str]]:
    """The tree a whole read gives (newest root first, children oldest first)."""
    kids: dict[str, list[ProcessSummary]] = {}
    roots = []
    for p in procs.values():
        if p.parent and p.parent in procs:
            kids.setdefault(p.parent, []).append(p)
        else:
            roots.append(p)
    out: list[tuple[int, str, str]] = []

    def walk(p: ProcessSummary, depth: int) -> None:
        status = p.status
        if p.kind == "session" and not p.parent and status == "running":
            status = "active"  # a fresh ledger: nothing is quiet for long enough
        out.append((depth, p.process_id, status))
        for c in sorted(kids.get(p.process_id, []), key=lambda c: c.started_ns):
            walk(c, depth + 1)

    for p in sorted(roots, key=lambda r: r.started_ns, reverse=True):
        walk(p, 0)
    return out


async def test_the_process_tree_refreshed_as_the_ledger_grows_reads_only_what_was_appended(
    client: SessionsClient,  # noqa: F811
    app_settings: SessionsAppSettings,  # noqa: F811
) -> None:
    ids = sorted(new_session_id() for _ in range(60))
    await client.writer.record([started(sid, "cmd") for sid in ids])
    await client.writer.record([ended(sid, "completed") for sid in ids[:30]])
    await client.writer.record([child(sid, f"{sid}-c") for sid in ids[::7]])
    backend = Backend(app_settings)
    app = JetsourceTui(backend, refresh_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        screen = app.screen
        assert isinstance(screen, ProcessesScreen)
        tree = screen.query_one("#tree", Tree)
        reader = (await backend.client()).sessions.reader
        assert isinstance(reader, LedgerReader)
        await until(pilot, lambda: bool(shown(tree)) and screen.loaded >= 1)
        assert shown(tree) == expected(await whole(client))

        asked: list[str] = []  # what the refreshes asked the reader besides the mark
        lifecycle, tail, tail_at = reader.lifecycle, reader.tail, reader.tail_at

        async def counted_lifecycle(to_seq: int | None = None) -> dict[str, ProcessSummary]:
            asked.append("lifecycle")
            return await lifecycle(to_seq)

        async def counted_tail(process_id: str) -> tuple[int, int]:
            asked.append(process_id)
            return await tail(process_id)

        async def counted_tail_at(process_id: str) -> tuple[int, int, int]:
            asked.append(process_id)
            return await tail_at(process_id)

        reader.lifecycle = counted_lifecycle  # type: ignore[method-assign]
        reader.tail = counted_tail  # type: ignore[method-assign]
        reader.tail_at = counted_tail_at  # type: ignore[method-assign]
        reads = screen.loaded
        await until(pilot, lambda: screen.loaded >= reads + 5)
        assert asked == [], "refreshes with nothing appended read the ledger again"

        live: list[Session] = []
        new: set[str] = set()  # the sessions begun while the screen is shown
        for round_ in range(4):
            async with session(client.writer, f"round {round_}") as done:
                done.emit("scan_progress", {"files_scanned": round_})
            new.add(done.id)
            one = await Session(client.writer, f"live {round_}").__aenter__()
            live.append(one)
            new.add(one.id)
            for earlier in live[:-1]:
                earlier.emit("scan_progress", {"files_scanned": round_})
                await earlier.flush()
            await client.writer.record([child(ids[40 + round_], f"{ids[40 + round_]}-r")])
            await one.flush()
            want = expected(await whole(client))
            await until(pilot, lambda want=want: shown(tree) == want)  # type: ignore[misc]
        assert "lifecycle" not in asked, "a refresh after appends read every lifecycle"
        # the histories read: only those of sessions begun meanwhile, each once (a live
        # session's new events follow its kept tail)
        assert set(asked) <= new, "a refresh read the history of a session it had"
        assert len(set(asked)) == len(asked), "a session's history was read twice"
        for one in live:
            await one.close()

        # a prune removes sessions from the stream: the next refresh reads whole
        reader.lifecycle = lifecycle  # type: ignore[method-assign]
        report = await client.sessions.prune(client.purger, older_than_s=0, keep=5)
        assert report.pruned
        want = expected(await whole(client))
        await until(pilot, lambda: shown(tree) == want)
