"""Every benchmark's quick mode, end to end, so the bench code cannot rot.

`python -m bench --quick` runs each bench/bench_*.py on small sizes against embedded
servers it starts itself (the same nats-server, Valkey and ArcadeDB wheels the test
session uses; a benchmark owns its servers so it can read their CPU time), and writes
its markdown tables. About 45 s on the 2-core dev machine. The figures mean nothing
here; that the tables come out complete does.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from bench.__main__ import modules

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)
def test_every_bench_quick_mode_writes_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    text = out.read_text()
    assert "Quick mode" in text
    names = modules()
    assert {"eventstore", "projector", "publisher", "query"} <= set(names)
    for name in names:
        assert f"## {name} (`python -m bench.bench_{name}`" in text, name
    assert "failed in this run" not in text
    for title in (
        "### Event store appends beside raw `js.publish`",
        "### Commands through the publisher",
        "### Time travel",
        "### GetContext from the Valkey context model",
        "### Projector rebuilds",
        "### Freshness",
    ):
        assert title in text, title
    # Every figure with an aim says whether it meets it.
    assert "| aim (issue 23) | verdict |" in text
    assert "CPU" in text and "nats-server" in text and "publisher" in text
    for row in ("in process: StateLoader.load(to_version=v), snapshots", "gRPC: GetContextAtTime"):
        assert row in text, row
    if importlib.util.find_spec("eventsourcing") is not None:
        for peer in (
            "pyeventsourcing, SQLite, no snapshots",
            "pyeventsourcing, SQLite, snapshots every 100",
            "(best peer)",
        ):
            assert peer in text, peer
