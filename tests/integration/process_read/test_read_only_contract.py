"""The query service is projection-backed by contract: import-linter (`make lint`)
refuses any path from `jetsource.processquery` to the event store, so a read path that
reached for the stream breaks the build. (The contract itself is in pyproject.toml.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
LINT = Path(sys.executable).with_name("lint-imports")
CONTRACT = "the process query service reads read models only, never the event stream"


def lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_root,
        env={"PYTHONPATH": str(package_root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_query_path_reading_the_event_store_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "services" / "jetsource",
        tmp_path / "jetsource",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    service = tmp_path / "jetsource" / "processquery" / "service.py"
    kept = lint(tmp_path)
    assert f"{CONTRACT} KEPT" in kept.stdout, kept.stdout + kept.stderr
    service.write_text(
        service.read_text() + "\nfrom jetsource.eventstore.jetstream import JetStreamEventStore\n"
    )
    run = lint(tmp_path)
    assert run.returncode != 0
    assert f"{CONTRACT} BROKEN" in run.stdout, run.stdout
    assert "jetsource.processquery.service -> jetsource.eventstore.jetstream" in run.stdout
