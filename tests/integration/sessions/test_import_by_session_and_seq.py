"""`jetsource sessions import` is idempotent by (session, seq) whatever recorded the
session first: an export of a session the emitter recorded, imported into the same
ledger, appends nothing (it appended every event again: the emitter's events carry no
idempotency key). A line that contradicts the ledger at its seq, or leaves a gap, is
refused naming the line; lines after the session's last seq are appended, and only
they. On the stream (NATS) and through the observer with the read models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.ledger import ObserverWriter, QueryReader
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.test_cli import cli

pytestmark = pytest.mark.integration


def _json(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


async def _write(path: Path, lines: list[str]) -> Path:
    await asyncio.to_thread(path.write_text, "".join(line + "\n" for line in lines))
    return path


async def _count(settings: SessionsAppSettings, sid: str) -> tuple[int, int]:
    shown = await cli(settings, "show", sid, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads((await cli(settings, "list", "-o", "json")).stdout)
    (row,) = [r for r in listed if r["session"] == sid]
    return json.loads(shown.stdout)["event_count"], row["event_count"]


async def _checks(settings: SessionsAppSettings, sid: str, tmp: Path, *via: str) -> list[str]:
    """Import the session's export back, a changed one, a gapped one and a longer one;
    the export before any of it."""
    exported = (await cli(settings, "export", sid)).stdout
    lines = exported.splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [1, 2, 3, 4]
    same = await _write(tmp / "same.jsonl", lines)

    again = await cli(settings, "import", str(same), *via)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "4 events, 0 appended, 4 already recorded"
    twice = await cli(settings, "import", str(same), *via, "-o", "json")
    assert json.loads(twice.stdout) == {"events": 4, "appended": 0}
    assert await _count(settings, sid) == (4, 4)
    assert (await cli(settings, "export", sid)).stdout == exported

    # A changed line at a recorded seq: refused naming it, nothing recorded.
    third = json.loads(lines[2])
    third["data"]["node_id"] = "changed"
    changed = await _write(tmp / "changed.jsonl", [*lines[:2], _json(third), lines[3]])
    refused = await cli(settings, "import", str(changed), *via, "-o", "json")
    assert refused.returncode == 1, refused.stderr
    error = json.loads(refused.stderr)["error"]
    assert error["code"] == "FAILED_PRECONDITION", error
    assert error["message"].startswith("line 3: "), error
    assert f"session {sid} seq 3" in error["message"] and "data" in error["message"], error
    # Another type at seq 2 (and an extra line after): refused, the extra one not appended.
    second = {**json.loads(lines[1]), "type": "level_completed"}
    extra = {**json.loads(lines[3]), "seq": 5, "type": "custom_note", "data": {"n": 1}}
    retyped = await _write(
        tmp / "retyped.jsonl", [lines[0], _json(second), *lines[2:], _json(extra)]
    )
    refused = await cli(settings, "import", str(retyped), *via)
    assert refused.returncode == 1 and "line 2: " in refused.stderr, refused.stderr
    assert "level_completed" in refused.stderr and "type" in refused.stderr, refused.stderr
    # A gap: seq 6 with seq 5 recorded nowhere.
    gap = {**extra, "seq": 6}
    gapped = await _write(tmp / "gap.jsonl", [*lines, _json(gap)])
    refused = await cli(settings, "import", str(gapped), *via)
    assert refused.returncode == 1 and "line 5: " in refused.stderr, refused.stderr
    assert "gap" in refused.stderr and "seq 5" in refused.stderr, refused.stderr
    assert await _count(settings, sid) == (4, 4)
    assert (await cli(settings, "export", sid)).stdout == exported

    # The session continued: only the lines after its last seq are appended, at their seq.
    more = [_json({**extra, "seq": 5 + i, "data": {"n": i}}) for i in range(2)]
    longer = await _write(tmp / "longer.jsonl", [*lines, *more])
    grown = await cli(settings, "import", str(longer), *via)
    assert grown.returncode == 0, grown.stderr
    assert grown.stdout.strip() == "6 events, 2 appended, 4 already recorded"
    again = await cli(settings, "import", str(longer), *via)
    assert again.stdout.strip() == "6 events, 0 appended, 6 already recorded"
    return [*lines, *more]


async def test_an_export_of_an_emitted_session_imports_into_its_ledger_as_recorded(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    async with session(client.writer, "context generate", argv=["gen"]) as s:
        s.emit("level_started", {"level": 0, "node_ids": ["a"]})
        s.emit("node_generation_completed", {"node_id": "a", "ratio": 0.5, "ok": True})
    after = await _checks(app_settings, s.id, tmp_path)
    assert (await cli(app_settings, "export", s.id)).stdout.splitlines() == after
    assert await _count(app_settings, s.id) == (6, 6)


@pytest.mark.e2e
async def test_through_the_observer_the_timeline_is_unchanged(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
    tmp_path: Path,
) -> None:
    """The defect as found: emitted through the observer, imported through it, the
    process timeline (the read models) shows each seq once."""
    from jetsource._gen.process.v1 import query_pb2

    app = SessionsAppSettings(nats=settings.nats)
    async with session(ObserverWriter(stack.record), "context generate") as s:
        s.emit("level_started", {"level": 0, "node_ids": ["a"]})
        s.emit("node_generation_completed", {"node_id": "a"})

    async def timeline() -> list[tuple[int, str]]:
        try:
            reply = await stack.reads.GetProcessTimeline(
                query_pb2.GetProcessTimelineRequest(process_id=s.id, page_size=100), timeout=10
            )
        except grpc.aio.AioRpcError as exc:  # the read models have not seen it yet
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return []
        return [(e.process_seq, e.event.event_type) for e in reply.events]

    before = await timeline()
    for _ in range(200):  # the read models catch up
        if len(before) == 4:
            break
        await asyncio.sleep(0.05)
        before = await timeline()
    assert [seq for seq, _ in before] == [1, 2, 3, 4]
    after = await _checks(app, s.id, tmp_path, "--observer", f"127.0.0.1:{stack.observer.port}")
    for _ in range(200):
        if len(await timeline()) == 6:
            break
        await asyncio.sleep(0.05)
    assert await timeline() == [*before, (5, "custom_note"), (6, "custom_note")]
    events = await QueryReader(stack.reads).events(s.id)
    # (the same documents; a Struct's keys come back in no set order)
    assert [e.event.to_dict() for e in events] == [json.loads(x) for x in after]


async def test_a_session_longer_than_one_atomic_append_imports_whole(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    """A session of more events than one atomic append takes (1,000) failed to import
    straight to the stream (`2500 events in one append`); it goes in pieces, each at the
    seq the last one left, and importing it again appends nothing."""
    sid = "01938f3a-0000-7000-8000-00000000abcd"
    lines = [
        _json(
            {
                "session": sid,
                "seq": 1 + i,
                "ts": "2026-12-01T10:00:00.000Z",
                "type": "session_started" if i == 0 else "custom_note",
                "data": {"command": "gen", "argv": []} if i == 0 else {"n": i},
            }
        )
        for i in range(2500)
    ]
    big = await _write(tmp_path / "big.jsonl", lines)
    first = await cli(app_settings, "import", str(big))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "2500 events, 2500 appended, 0 already recorded"
    again = await cli(app_settings, "import", str(big))
    assert again.stdout.strip() == "2500 events, 0 appended, 2500 already recorded"
    exported = (await cli(app_settings, "export", sid)).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in exported] == list(range(1, 2501))


async def test_a_new_session_whose_seq_1_is_not_session_started_is_refused(
    app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    """Imported, it was a process no `list` showed and no `prune` removed (show, export
    and follow read it): now refused naming the line, and nothing is recorded."""
    sid = "01a24e3f-200e-7000-bfc7-bf89ccee3d71"
    ts = "2026-12-07T02:04:49.550Z"
    for first in (
        {"type": "level_started", "data": {"level": 0}},
        {"type": "session_ended", "data": {"status": "completed"}},
    ):
        lines = [
            _json({"ts": ts, "session": sid, "seq": 1, **first}),
            _json({"ts": ts, "session": sid, "seq": 2, "type": "custom", "data": {}}),
        ]
        got = await cli(app_settings, "import", str(await _write(tmp_path / "f.jsonl", lines)),
                        "-o", "json")  # fmt: skip
        assert got.returncode == 1, got.stderr
        error = json.loads(got.stderr)["error"]
        assert (error["code"], error["line"]) == ("FAILED_PRECONDITION", 1), error
        assert "session_started" in error["message"]
        missing = await cli(app_settings, "show", sid, "-o", "json")
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def _bad_command_file(good: str, bad: str) -> list[str]:
    """A good session first (recorded first were it not refused), then a session whose
    command (its root process's one-line name) clears the screen and forges a line."""
    ts = "2026-12-07T03:00:00.000Z"
    return [
        _json({"ts": ts, "session": good, "seq": 1, "type": "session_started",
               "data": {"command": "gen", "argv": []}}),
        _json({"ts": ts, "session": good, "seq": 2, "type": "custom_note", "data": {}}),
        _json({"ts": ts, "session": bad, "seq": 1, "type": "session_started",
               "data": {"command": "evil\x1b[2J\nforged", "argv": []}}),
    ]  # fmt: skip


async def _refused_naming_the_line(settings: SessionsAppSettings, tmp: Path, *via: str) -> None:
    good, bad = "01a24e3f-300e-7000-bfc7-bf89ccee3d71", "01a24e3f-300e-7000-bfc7-bf89ccee3d72"
    path = await _write(tmp / "bad_command.jsonl", _bad_command_file(good, bad))
    got = await cli(settings, "import", str(path), *via, "-o", "json")
    assert got.returncode == 2, got.stderr
    error = json.loads(got.stderr)["error"]
    assert (error["code"], error["line"]) == ("INVALID_ARGUMENT", 3), error
    assert error["message"].startswith("line 3: data.command: "), error
    assert "U+001B at position 4" in error["message"], error
    for sid in (good, bad):  # nothing of the file is recorded
        missing = await cli(settings, "show", sid, "-o", "json")
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr, missing.stdout


async def test_a_session_command_that_is_not_one_line_is_refused_naming_the_line(
    app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    """Straight to the stream it was recorded as the session's process name, ESC and
    line break and all: now refused as a bad line (exit 2, line 3, data.command) and
    nothing of the file is recorded, the good session before it included."""
    await _refused_naming_the_line(app_settings, tmp_path)


@pytest.mark.e2e
async def test_through_the_observer_a_session_command_not_one_line_is_refused_first(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
    tmp_path: Path,
) -> None:
    """Through the observer the refusal came back naming events[i].data.name, not the
    line, after the good session's batch was recorded: now refused as the file is
    read, naming the line and field, with nothing recorded."""
    app = SessionsAppSettings(nats=settings.nats)
    await _refused_naming_the_line(app, tmp_path, "--observer", f"127.0.0.1:{stack.observer.port}")
