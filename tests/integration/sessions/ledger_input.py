"""What the sessions tests write to the ledger another way than the emitter (JSONL lines
as `sessions import` reads them, raw process events as another observer records them),
and the listing they read back once the read models caught up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.struct_pb2 import Struct

from jetsource._gen.process.v1 import events_pb2 as ev
from jetsource.domains.sessions.record import SessionRecord
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.test_cli import cli

TS = "2026-12-01T10:00:00.000Z"

Row = TypeVar("Row")


def line(sid: str, seq: int, kind: str, data: dict[str, object], ts: str = TS) -> str:
    """One JSONL line of session ``sid`` as `sessions import` reads it, at ``ts``."""
    return json.dumps({"ts": ts, "session": sid, "seq": seq, "type": kind, "data": data})


async def imported(
    settings: SessionsAppSettings, tmp_path: Path, lines: list[str]
) -> list[dict[str, Any]]:
    """The lines imported with `sessions import`; the rows `sessions list` says then."""
    source = tmp_path / "sessions.jsonl"
    await asyncio.to_thread(source.write_text, "\n".join(lines) + "\n")
    run = await cli(settings, "import", str(source), "-o", "json")
    assert run.returncode == 0, run.stderr
    listed = await cli(settings, "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return rows


def raw(pid: str, event_type: str, **data: Any) -> ev.CanonicalEvent:
    """A process event as a raw writer (source "raw") sends it to the observer."""
    body = Struct()
    body.update(data)
    return ev.CanonicalEvent(process_id=pid, event_type=event_type, source="raw", data=body)


async def listed_when_caught_up(
    sessions: Sessions,
    want: dict[str, Row],
    row: Callable[[SessionRecord], Row],
    ready: Callable[[Sessions], Awaitable[bool]] | None = None,
) -> dict[str, Row]:
    """The rows ``list_sessions(with_errors=True)`` gives of ``want``'s sessions, each as
    ``row`` says it, asked again until they are ``want`` (the read models catch up, each
    at its own pace), every 0.05 s and 200 times at most; listed only once ``ready``
    says yes of them. It fails nothing itself: the test asserts what it returns."""
    listed: dict[str, Row] = {}
    for _ in range(200):
        if ready is None or await ready(sessions):
            listed = {
                r.session_id: row(r)
                for r in await sessions.list_sessions(with_errors=True)
                if r.session_id in want
            }
            if listed == want:
                break
        await asyncio.sleep(0.05)
    return listed
