"""`sessions import` of a line whose event the stream cannot hold (past its
max_msg_size): refused as a bad line, naming its line (exit 2). It said "event 1 (...)
is N bytes" (its place in the append, not the file's line) with no field, exit 1
(real NATS, the stream writer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.test_cli import cli

pytestmark = pytest.mark.integration

TS = "2026-12-01T10:00:00.000Z"


def doc(sid: str, seq: int, kind: str, data: dict[str, object]) -> str:
    return json.dumps({"ts": TS, "session": sid, "seq": seq, "type": kind, "data": data})


async def test_a_line_too_large_for_the_stream_is_refused_naming_its_line(
    app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    lines = [
        doc("small", 1, "session_started", {"command": "c"}),
        doc("small", 2, "note", {"text": "x"}),
        doc("big", 1, "session_started", {"command": "c"}),
        doc("big", 2, "note", {"text": "x"}),
        doc("big", 3, "blob", {"text": "x" * 2_000_000}),
    ]
    source = tmp_path / "big.jsonl"
    source.write_text("\n".join(lines) + "\n")
    run = await cli(app_settings, "import", str(source), "-o", "json")
    assert run.returncode == 2, (run.stdout, run.stderr)
    error = json.loads(run.stderr)["error"]
    assert (error["code"], error["field"], error["line"]) == ("INVALID_ARGUMENT", "line 5", 5)
    assert error["message"].startswith("line 5: the event (blob) is "), error
    assert "bytes per event" in error["message"]
    # the big session's append is one: none of it was recorded
    shown = await cli(app_settings, "show", "big", "-o", "json")
    assert json.loads(shown.stderr)["error"]["code"] == "NOT_FOUND"
    # the line fixed, the same import records the rest
    source.write_text("\n".join([*lines[:4], doc("big", 3, "blob", {"text": "x"})]) + "\n")
    again = await cli(app_settings, "import", str(source), "-o", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["events"] == 5
