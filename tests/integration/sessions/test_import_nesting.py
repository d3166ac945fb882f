"""Data nested deeper than the observer takes (20 levels, the data object the first):
`sessions import` straight to the stream and the emitter on the ledger recorded it, and
from 34 levels no reader parsed it back (the session answered DATA_LOSS, and so did the
query reader's whole `list`). Now both refuse it naming the line and field, as the
observer does, and nothing is recorded (real NATS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.format import EventFormatError
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.test_cli import cli

pytestmark = pytest.mark.integration

TS = "2026-12-01T10:00:00.000Z"


def nested(levels: int, as_list: bool = False) -> Any:
    """``levels`` objects (or an object holding lists) one in another: the data."""
    value: Any = 1
    for _ in range(levels - 1):
        value = [value] if as_list else {"a": value}
    return {"a": value}


def lines(sid: str, data: Any) -> str:
    docs = [
        {"ts": TS, "session": sid, "seq": 1, "type": "session_started", "data": {"command": "c"}},
        {"ts": TS, "session": sid, "seq": 2, "type": "deep_data", "data": data},
    ]
    return "".join(json.dumps(d) + "\n" for d in docs)


@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("levels", [21, 40])
async def test_import_of_data_nested_too_deep_is_refused_naming_the_line(
    app_settings: SessionsAppSettings, tmp_path: Path, levels: int, as_list: bool
) -> None:
    sid = f"deep-{levels}-{as_list}"
    source = tmp_path / "deep.jsonl"
    source.write_text(lines(sid, nested(levels, as_list)))
    run = await cli(app_settings, "import", str(source), "-o", "json")
    assert run.returncode == 2, (run.stdout, run.stderr)
    error = json.loads(run.stderr)["error"]
    assert error["field"] == "line 2" and "nested deeper than 20 levels" in error["message"]
    assert "data.a" in error["message"]
    shown = await cli(app_settings, "show", sid, "-o", "json")
    assert shown.returncode == 1 and json.loads(shown.stderr)["error"]["code"] == "NOT_FOUND"


async def test_import_of_data_nested_as_deep_as_the_observer_takes_reads_back(
    app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    source = tmp_path / "deep.jsonl"
    text = lines("deep-20", nested(20))
    source.write_text(text)
    run = await cli(app_settings, "import", str(source), "-o", "json")
    assert run.returncode == 0, run.stderr
    exported = await cli(app_settings, "export", "deep-20")
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(x) for x in exported.stdout.splitlines()] == [
        json.loads(x) for x in text.splitlines()
    ]


async def test_the_emitter_refuses_data_nested_too_deep_naming_the_field(
    client: SessionsClient,
) -> None:
    async with session(client.writer, "scan") as s:
        with pytest.raises(EventFormatError) as caught:
            s.emit("deep_data", nested(21))
        assert caught.value.field.startswith("data.a.a")
        s.emit("deep_data", nested(20))
    events = await client.sessions.export(s.id)
    assert [e.type for e in events] == ["session_started", "deep_data", "session_ended"]
