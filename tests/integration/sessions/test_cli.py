"""`jetsource sessions ...` end to end: a real NATS server, sessions emitted through the
ledger, the command run as a process (its output and exit codes as a user sees them)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.sessions import app
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.format import SessionEvent
from jetsource.domains.sessions.settings import SessionsAppSettings

CLI = "from jetsource.cli.sessions import app; app(prog_name='jetsource sessions')"


def env_of(settings: SessionsAppSettings, inherit: bool = False) -> dict[str, str]:
    return {
        **(dict(os.environ) if inherit else {}),
        "JETSOURCE_NATS__URL": settings.nats_url(),
        "JETSOURCE_SESSIONS__STREAM": settings.sessions.stream,
        "JETSOURCE_SESSIONS__SUBJECT_PREFIX": settings.sessions.subject_prefix,
    }


async def cli(settings: SessionsAppSettings, *args: str) -> Result:
    """The command in this process (in a thread: it runs its own event loop)."""
    runner = CliRunner(env=env_of(settings))
    result = await asyncio.to_thread(runner.invoke, app, list(args), catch_exceptions=False)
    out.set_mode(None)
    return Result(result.exit_code, result.stdout, result.stderr)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def test_list_show_export_and_catalog(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    async with session(client.writer, "context generate", argv=["a"]) as s:
        s.emit("level_started", {"level": 0, "node_ids": ["n1"]})
        s.emit("node_generation_completed", {"node_id": "n1"})
    listed = await cli(app_settings, "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["session"], r["status"], r["command"], r["event_count"]) for r in rows] == [
        (s.id, "completed", "context generate", 4)
    ]
    shown = json.loads((await cli(app_settings, "show", s.id, "-o", "json")).stdout)
    assert shown["snapshot"]["nodes"] == {"complete": 1}
    assert shown["metadata"]["argv"] == ["a"]
    exported = await cli(app_settings, "export", s.id)
    events = [SessionEvent.from_json(line) for line in exported.stdout.splitlines()]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[-1].type == "session_ended"
    missing = await cli(app_settings, "show", "no-such-session", "-o", "json")
    assert missing.returncode == 1
    assert json.loads(missing.stderr)["error"]["code"] == "NOT_FOUND"
    bad = await cli(app_settings, "list", "--status", "sleeping")
    assert bad.returncode == 2 and "--status" in bad.stderr
    catalog = json.loads((await cli(app_settings, "catalog", "-o", "json")).stdout)
    assert "node_generation_failed" in catalog["groups"]["orchestrator"]["events"]


async def test_follow_prints_json_lines_live_and_ends_after_session_ended(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    s = Session(client.writer, "watch")
    await s.__aenter__()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        "follow",
        s.id,
        env=env_of(app_settings, inherit=True),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    assert (first["seq"], first["type"]) == (1, "session_started")
    s.emit("file_changed", {"path": "a.py", "change": "modified"})
    await s.flush()
    t0 = time.monotonic()
    second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
    assert (second["seq"], second["data"]["path"]) == (2, "a.py")
    assert time.monotonic() - t0 < 5
    await s.close()
    rest = (await asyncio.wait_for(proc.stdout.read(), 10)).decode().splitlines()
    assert [json.loads(line)["type"] for line in rest] == ["session_ended"]
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_prune_dry_run_then_prune(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    ids = []
    for i in range(3):
        async with session(client.writer, f"run {i}") as s:
            pass
        ids.append(s.id)
        await asyncio.sleep(0.005)
    dry = await cli(app_settings, "prune", "--older-than", "30d", "--keep", "1", "--dry-run",
                    "-o", "json")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["sessions"] == ids[:2]
    assert len(json.loads((await cli(app_settings, "list", "-o", "json")).stdout)) == 3
    done = await cli(app_settings, "prune", "--keep", "1", "-o", "json")
    assert json.loads(done.stdout)["sessions"] == ids[:2]
    left = json.loads((await cli(app_settings, "list", "-o", "json")).stdout)
    assert [r["session"] for r in left] == [ids[2]]
    bad = await cli(app_settings, "prune", "--older-than", "soon")
    assert bad.returncode == 2 and "duration" in bad.stderr


async def test_import_records_an_exported_session_once_and_refuses_bad_lines(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    async with session(client.writer, "context generate") as s:
        s.emit("level_started", {"level": 0})
    exported = (await cli(app_settings, "export", s.id)).stdout
    # the same session moved to another id, as if it came from another machine
    moved = exported.replace(s.id, "imported-1")
    source = tmp_path / "session.jsonl"
    await asyncio.to_thread(source.write_text, moved)
    first = await cli(app_settings, "import", str(source), "-o", "json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"events": 3, "appended": 3}
    again = await cli(app_settings, "import", str(source), "-o", "json")
    assert json.loads(again.stdout) == {"events": 3, "appended": 0}
    assert (await cli(app_settings, "export", "imported-1")).stdout == moved
    bad = tmp_path / "bad.jsonl"
    lines = moved.splitlines()
    await asyncio.to_thread(
        bad.write_text, "\n".join([lines[0].replace("imported-1", "imported-2"), "{}"])
    )
    refused = await cli(app_settings, "import", str(bad), "-o", "json")
    assert refused.returncode == 2
    assert "line 2: ts: is missing" in json.loads(refused.stderr)["error"]["message"]
    assert (await cli(app_settings, "show", "imported-2")).returncode == 1  # nothing recorded


async def test_show_of_a_poisoned_session_is_data_loss_naming_the_sequence(
    client: SessionsClient, app_settings: SessionsAppSettings
) -> None:
    """A message no writer would store (published raw after the session's events) makes
    `sessions show` answer DATA_LOSS naming its stream sequence and the repair, exit 1,
    not an INTERNAL line; the other sessions still list."""
    from jetsource.eventstore import jsapi
    from jetsource.eventstore.jsapi import OutMessage

    async with session(client.writer, "poisoned") as s:
        s.emit("level_started", {"level": 0})
    async with session(client.writer, "healthy") as ok:
        ok.emit("level_started", {"level": 0})
    replies = jsapi.Replies(client.nc)
    await replies.start()
    subject = f"{app_settings.sessions.subject_prefix}.{s.id}.step_done"
    ack = await jsapi.publish(replies, OutMessage(subject, b"\xff not an event", {}), 5.0)
    await replies.stop()
    shown = await cli(app_settings, "show", s.id, "-o", "json")
    assert shown.returncode == 1, shown
    error = json.loads(shown.stderr)["error"]
    assert error["code"] == "DATA_LOSS" and f"stream sequence {ack.seq}" in error["message"]
    listed = await cli(app_settings, "list", "-o", "json")
    assert ok.id in {r["session"] for r in json.loads(listed.stdout)}
