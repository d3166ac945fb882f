"""observe import's causation rule (docs/process-ledger.md, the JSONL adapter): a line
without its own causation_id is caused by its process's previous event, and a
process_started with a parent by the parent's latest event. A process_started after
lines of its own process took that process's previous event instead (the differential
check of the process ledger, diff7); the rule holds across a resumed run too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jetsource.domains.process.adapters import JsonlAdapter


def _causes(path: Path, rows: list[dict[str, Any]], resume_after: int = 0) -> dict[str, str]:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter = JsonlAdapter("S", "jsonl")
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        lines = list(adapter.lines(f, follow_partial=False))
    for i, line in enumerate(lines):
        if resume_after and i == resume_after:  # a new run from the saved position
            adapter.advance(lines[i - 1])
            adapter = JsonlAdapter.resume("S", adapter.position, "jsonl")
        (event,) = adapter.normalize(line)
        out[event.event_id] = event.causation_id
    return out


ROWS: list[dict[str, Any]] = [
    {"process_id": "root", "event_type": "process_started", "event_id": "r1"},
    {"process_id": "child", "event_type": "step", "event_id": "c1"},  # before its start
    {"process_id": "root", "event_type": "step", "event_id": "r2"},
    {
        "process_id": "child",
        "event_type": "process_started",
        "event_id": "c2",
        "parent_process_id": "root",
    },
    {"process_id": "child", "event_type": "step", "event_id": "c3"},
    {"process_id": "late", "event_type": "step", "event_id": "l1", "parent_process_id": "root"},
    {"process_id": "orphan", "event_type": "step", "event_id": "o1"},
    {
        "process_id": "orphan",
        "event_type": "process_started",
        "event_id": "o2",
        "parent_process_id": "ghost",
    },
]
WANT = {"r1": "", "c1": "", "r2": "r1", "c2": "r2", "c3": "c2", "l1": "r2", "o1": "", "o2": "o1"}


def test_a_process_started_with_a_parent_is_caused_by_the_parents_latest(
    tmp_path: Path,
) -> None:
    assert _causes(tmp_path / "run.jsonl", ROWS) == WANT


def test_the_rule_holds_across_a_resumed_run(tmp_path: Path) -> None:
    assert _causes(tmp_path / "run.jsonl", ROWS, resume_after=3) == WANT
