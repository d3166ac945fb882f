"""Every benchmark's quick mode, end to end, so the bench code cannot rot.

`python -m bench --quick` runs each bench/bench_*.py on small sizes against embedded
servers it starts itself (the same nats-server, Valkey and ArcadeDB wheels the test
session uses; a benchmark owns its servers so it can read their CPU time), and writes
its markdown tables. Run as four processes side by side: the modules mostly wait (for
servers to start, leases to expire, probes at a fixed rate), one process in a row used
47 s of CPU in 113 s, so four share the two cores of the dev machine well (37 s with
other work running; three took 46 s, two 81 s in CI). The figures mean nothing here;
that the tables come out complete does.
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


# Seconds each quick mode took alone on the dev machine (one `python -m bench --quick`,
# 2026-12-05): the modules are dealt to PROCESSES processes, longest first, each to the
# least loaded one. A module missing here counts 1 s; measure it and add it.
COST = {
    "endpoints": 35,
    "query": 25,
    "projector": 24,
    "scaleout": 23,
    "omni": 10,
    "process_query": 8,
    "publisher": 7,
    "storage": 6,
    "sessions": 3,
    "observer": 2,
}
PROCESSES = 4


def shares(names: list[str], processes: int = PROCESSES) -> list[list[str]]:
    groups: list[list[str]] = [[] for _ in range(processes)]
    load = [0.0] * processes
    for name in sorted(names, key=lambda n: -COST.get(n, 1)):
        i = load.index(min(load))
        groups[i].append(name)
        load[i] += COST.get(name, 1)
    return [g for g in groups if g]


@pytest.mark.timeout(420)
def test_every_bench_quick_mode_writes_its_tables(tmp_path: Path) -> None:
    runs = []
    for i, group in enumerate(shares(modules())):
        out_i = tmp_path / f"results-{i}.md"
        command = [sys.executable, "-m", "bench", "--quick", "--only", ",".join(group)]
        proc = subprocess.Popen(
            [*command, "--out", str(out_i)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs.append((proc, out_i))
    texts = []
    for proc, out_i in runs:
        stdout, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
        texts.append(out_i.read_text())
    out = tmp_path / "results.md"
    out.write_text("\n".join(texts))
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
        "### Time travel: a 600-event story (the issue's story",
        "### Time travel: a 600-event story (a story that keeps growing",
        "### GetContext from the Valkey context model",
        "### Projector rebuilds",
        "### Freshness",
        "### Endpoint latency: 20 sequential requests each",
    ):
        assert title in text, title
    # Every figure with an aim says whether it meets it.
    assert "| aim (issue 23) | verdict |" in text
    assert "CPU" in text and "nats-server" in text and "publisher" in text
    for row in ("in process: StateLoader.load(to_version=v), snapshots", "gRPC: GetContextAtTime"):
        assert row in text, row
    # The publisher's floors: the same gRPC call served by stand-ins doing less.
    for row in (
        "floor: gRPC service answering at once",
        "floor: gRPC service awaiting one raw js.publish per call",
        "floor: gRPC service awaiting one event store append per call",
        "Floors at 16 client(s), CPU ms per call",
    ):
        assert row in text, row
    if importlib.util.find_spec("eventsourcing") is not None:
        for peer in (
            "pyeventsourcing, SQLite, no snapshots",
            "pyeventsourcing, SQLite, snapshots every 100",
            "(best peer)",
        ):
            assert peer in text, peer
