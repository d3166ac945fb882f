"""A benchmark's scratch directory is gone when its process ends (benchmarks left about
230 in the temp dir, up to 1.2 GB each), unless JETSOURCE_BENCH_KEEP=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
from bench.common import scratch_dir
path = scratch_dir("jetsource-test-scratch-")
(path / "nats").mkdir()
(path / "nats" / "1.blk").write_bytes(b"x" * 1000)
print(path)
"""


def scratch_of_a_child(tmp_path: Path, keep: bool) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "JETSOURCE_BENCH_KEEP"}
    env["TMPDIR"] = str(tmp_path)
    if keep:
        env["JETSOURCE_BENCH_KEEP"] = "1"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    path = Path(out.stdout.strip())
    assert path.parent == tmp_path, out
    return path


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_a_bench_scratch_dir_lasts_as_long_as_its_process(tmp_path: Path, keep: bool) -> None:
    path = scratch_of_a_child(tmp_path, keep)
    assert path.exists() is keep
    assert list(tmp_path.iterdir()) == ([path] if keep else [])
