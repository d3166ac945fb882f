"""`jetsource sessions import --observer`: an event the observer refuses is named by its
line in the file (1-based, blank lines counted), as the import to the stream names a
bad line, never by its place among the events sent (``events[1]``, ``event 1``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.test_cli import cli

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SID = "01a24e3f-400e-7000-bfc7-bf89ccee3d71"
TS = "2026-12-07T04:00:00.000Z"


def _line(seq: int, kind: str, data: dict[str, object]) -> str:
    doc = {"ts": TS, "session": SID, "seq": seq, "type": kind, "data": data}
    return json.dumps(doc, separators=(",", ":"))


async def test_an_event_the_observer_refuses_is_named_by_its_line(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
    tmp_path: Path,
) -> None:
    """Five events of 200 kB fill the first request (1 MiB), so the one over the
    observer's payload limit (256 kB) is the second request's: it said neither its line
    (10) nor its place among the lines, but an uncaught EventTooLargeError's index."""
    app = SessionsAppSettings(nats=settings.nats)
    lines = [
        "",
        _line(1, "session_started", {"command": "gen", "argv": []}),
        "   ",
        *(_line(2 + i, "custom_note", {"blob": "x" * 200_000}) for i in range(5)),
        "",
        _line(7, "custom_note", {"blob": "y" * 300_000}),  # line 10
        _line(8, "custom_note", {"n": 1}),
    ]
    path = tmp_path / "observer.jsonl"
    await asyncio.to_thread(path.write_text, "".join(x + "\n" for x in lines))
    via = ("--observer", f"127.0.0.1:{stack.observer.port}")

    got = await cli(app, "import", str(path), *via, "-o", "json")
    assert got.returncode == 2, (got.stdout, got.stderr)
    assert "Traceback" not in got.stderr
    error = json.loads(got.stderr)["error"]
    assert (error["code"], error["line"], error["field"]) == (
        "INVALID_ARGUMENT",
        10,
        "line 10",
    ), error
    assert error["message"].startswith("line 10: "), error
    assert "events[" not in error["message"] and "event 6" not in error["message"], error

    text = await cli(app, "import", str(path), *via)
    assert text.returncode == 2, text.stderr
    assert text.stderr.startswith("INVALID_ARGUMENT: line 10: data: the payload is "), text.stderr
    assert "Traceback" not in text.stderr and "events[" not in text.stderr

    # Seq 7 and what follows it were not recorded.
    exported = (await cli(app, "export", SID)).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in exported] == [1, 2, 3, 4, 5, 6][: len(exported)]
