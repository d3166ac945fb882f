"""What the sessions tests write to the ledger another way than the emitter: JSONL lines
as `sessions import` reads them, raw process events as another observer records them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from google.protobuf.struct_pb2 import Struct

from jetsource._gen.process.v1 import events_pb2 as ev
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.test_cli import cli

TS = "2026-12-01T10:00:00.000Z"


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
