"""The layering is enforced, not only described: `make lint` runs import-linter, and
its contract fails the moment an engine module imports a domain."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_root,
        env={"PYTHONPATH": str(package_root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_its_layers() -> None:
    run = lint(ROOT / "services")
    assert run.returncode == 0, run.stdout + run.stderr


def test_an_engine_module_importing_a_domain_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "services" / "jetsource",
        tmp_path / "jetsource",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    runtime = tmp_path / "jetsource" / "projection" / "runtime.py"
    runtime.write_text(
        runtime.read_text() + "\nfrom jetsource.domains.context import model  # noqa\n"
    )
    run = lint(tmp_path)
    assert run.returncode != 0
    assert "jetsource.projection.runtime -> jetsource.domains.context" in run.stdout
    assert "the engine imports no domain" in run.stdout
