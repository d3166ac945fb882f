"""`jetsource observe import FILE.jsonl [--follow]` against a real observer: resumes
from its saved position, re-import and re-reading after a lost position are
duplicates (nothing doubled), explicit causation, a refused line names itself,
--follow tails a growing file."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import last_seq

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "jetsource", "observe", "import"]


async def run(*args: str, timeout: float = 60) -> tuple[int, Any, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    text = stdout.decode()
    return proc.returncode or 0, json.loads(text) if text.strip() else None, stderr.decode()


def lines_for(root: str, child: str, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        # the child first: its parent arrives later in the file
        {
            "process_id": child,
            "parent_process_id": root,
            "event_type": "process_started",
            "data": {"kind": "tool", "name": "search"},
        },
        {
            "process_id": root,
            "event_type": "process_started",
            "data": {"kind": "agent"},
            "occurred_at": "2026-01-01T00:00:00Z",
            "event_id": f"own-{root}",
        },
    ]
    out += [{"process_id": root, "eventType": "step", "data": {"i": i}} for i in range(n)]
    out.append({"process_id": child, "event_type": "process_completed"})
    return out


def write(path: Path, rows: list[dict[str, Any]], mode: str = "w") -> None:
    with open(path, mode) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


async def test_import_then_reimport_and_a_lost_position_record_each_line_once(
    observer: Observer, tmp_path: Path
) -> None:
    root, child = f"r-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "events.jsonl"
    rows = lines_for(root, child, 20)
    write(path, rows)
    target = f"127.0.0.1:{observer.port}"
    code, summary, err = await run(str(path), "--observer", target, "--batch", "7", "-o", "json")
    assert code == 0, err
    assert (summary["lines"], summary["recorded"], summary["duplicates"]) == (23, 23, 0)
    stored = await observer.store.read_aggregate(root)
    assert [r.envelope.event_type for r in stored] == ["process_started"] + ["step"] * 20
    assert stored[0].event_id == f"own-{root}"
    assert stored[0].envelope.occurred_at.ToJsonString() == "2026-01-01T00:00:00Z"
    # explicit causation: each step caused by the previous event of its process
    for before, after in itertools.pairwise(stored):
        assert after.envelope.causation_id == before.event_id
    kid = await observer.store.read_aggregate(child)
    assert kid[0].envelope.parent_aggregate_id == root
    assert kid[1].envelope.causation_id == kid[0].event_id
    assert {r.envelope.source for r in stored} == {"jsonl"}

    seq = await last_seq(observer.store)
    # Again with its position: nothing left to read.
    code, summary, _ = await run(str(path), "--observer", target, "-o", "json")
    assert (code, summary["lines"], summary["events"]) == (0, 0, 0)
    # The position lost (a crash before it was saved, or deleted): all duplicates.
    (tmp_path / "events.jsonl.jetsource-position").unlink()
    code, summary, _ = await run(str(path), "--observer", target, "-o", "json")
    assert (code, summary["lines"], summary["recorded"], summary["duplicates"]) == (0, 23, 0, 23)
    assert await last_seq(observer.store) == seq

    # The file grows: a re-run records only the new lines.
    write(path, [{"process_id": root, "event_type": "process_completed"}], "a")
    code, summary, _ = await run(str(path), "--observer", target, "-o", "json")
    assert (summary["lines"], summary["recorded"]) == (1, 1)
    last = (await observer.store.read_aggregate(root))[-1]
    assert last.envelope.causation_id == stored[-1].event_id, "causation survives a restart"


async def test_a_refused_line_stops_the_import_naming_it_with_the_lines_before_recorded(
    observer: Observer, tmp_path: Path
) -> None:
    p = f"bad-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "bad.jsonl"
    write(
        path,
        [
            {"process_id": p, "event_type": "ok"},
            {"process_id": p, "event_type": "ok"},
            {"process_id": p, "event_type": "ok", "bogus": 1},
            {"process_id": p, "event_type": "ok"},
        ],
    )
    target = f"127.0.0.1:{observer.port}"
    code, _, err = await run(str(path), "--observer", target, "-o", "json")
    assert code == 1
    error = json.loads(err)["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "line 3.bogus"
    assert len(await observer.store.read_aggregate(p)) == 2
    state = json.loads((tmp_path / "bad.jsonl.jetsource-position").read_text())
    assert state["line"] == 2
    for row, message in (([1, 2], "must be a JSON object"), ("nope", "not JSON")):
        path.write_text(
            json.dumps({"process_id": p, "event_type": "x", "data": row}) + "\n"
            if row != "nope"
            else "nope\n"
        )
        code, _, err = await run(
            str(path), "--observer", target, "--state", str(tmp_path / "other"), "-o", "json"
        )
        assert code == 1 and message in err


async def test_follow_tails_a_growing_file_until_interrupted(
    observer: Observer, tmp_path: Path
) -> None:
    p = f"tail-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "live.jsonl"
    path.write_text("")
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        str(path),
        "--follow",
        "--poll",
        "0.05",
        "--observer",
        f"127.0.0.1:{observer.port}",
        "-o",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def stored() -> int:
        return (
            len(await observer.store.read_aggregate(p))
            if await observer.store.last_version(p)
            else 0
        )

    async def until(n: int) -> None:
        for _ in range(200):
            if await stored() == n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{await stored()} events, not {n}")

    write(path, [{"process_id": p, "event_type": "tick", "data": {"i": i}} for i in range(3)], "a")
    await until(3)
    line = json.dumps({"process_id": p, "event_type": "tick", "data": {"i": 3}})
    append(path, line[:20])  # a line still being written: held back
    await asyncio.sleep(0.3)
    assert await stored() == 3
    append(path, line[20:] + "\n")
    await until(4)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert (summary["lines"], summary["recorded"]) == (4, 4)
    ticks = [int(r.event.data["i"]) for r in await observer.store.read_aggregate(p)]  # type: ignore[union-attr]
    assert ticks == [0, 1, 2, 3]
