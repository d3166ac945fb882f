"""The committed generated code matches proto/; a stale tree fails with what to run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "genproto.py"


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generated_code_is_current() -> None:
    result = run_check(ROOT)
    assert result.returncode == 0, result.stderr


def test_changed_proto_without_regenerating_fails_with_instructions(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(
        ROOT / "services" / "jetsource" / "_gen",
        tmp_path / "services" / "jetsource" / "_gen",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    envelope = next((tmp_path / "proto").rglob("envelope.proto"))
    envelope.write_text(
        envelope.read_text().replace(
            "message EventEnvelope {", "message EventEnvelope {\n  string added_field = 99;"
        )
    )
    result = run_check(tmp_path)
    assert result.returncode == 1
    assert "make proto" in result.stderr
    assert "envelope_pb2" in result.stderr
