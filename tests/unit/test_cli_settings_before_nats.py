"""fix10c: 11578ab made every admin group try NATS's TCP port first, to say a closed
port at once; a bad setting was then said as "not reachable" (exit 3) when nothing
listened, and only named once NATS was up (``projector status`` with a domains setting
that loads no registry: exit 3 instead of 2 naming JETSOURCE_PROJECTOR__DOMAINS).
The settings are checked before NATS is tried, in every group that connects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_env import clean_environ
from tests.unit.test_cli_nats_refused_fast import closed_port


def run_cli(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetsource", "-o", "json", *argv],
        env=clean_environ() | {"JETSOURCE_NATS__URL": f"nats://127.0.0.1:{closed_port()}"} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["projector", "status"],
        ["erase", "subject-1", "--yes"],
        ["repair", "void", "--seq", "1", "--reason", "r", "--yes"],
        ["archive", "list"],
        ["streams", "backup", "{out}"],
    ],
    ids=["projector", "erase", "repair", "archive", "streams"],
)
def test_a_bad_domains_setting_wins_over_a_closed_port(args: list[str], tmp_path: Path) -> None:
    argv = [a.format(out=tmp_path / "backup") for a in args]
    run = run_cli(argv, JETSOURCE_PROJECTOR__DOMAINS="no_such_domains_module")
    assert run.returncode == 2, run.stderr  # was 3, "not reachable"
    error = json.loads(run.stderr.splitlines()[-1])["error"]
    assert error["field"] == "JETSOURCE_PROJECTOR__DOMAINS", error
    assert "no_such_domains_module" in error["message"]
    assert "reachable" not in error["message"]


@pytest.mark.parametrize(
    "args",
    [
        ["projector", "status"],
        ["archive", "list"],
        ["streams", "backup", "{out}"],
        ["sessions", "list"],
        ["omni", "raw", "show", "x"],
    ],
    ids=["projector", "archive", "streams", "sessions", "omni"],
)
def test_tls_files_that_do_not_load_win_over_a_closed_port(args: list[str], tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    argv = [a.format(out=tmp_path / "backup") for a in args]
    run = run_cli(argv, JETSOURCE_NATS__TLS__CA_FILE=str(ca))
    assert run.returncode == 1, run.stderr  # was 3, "not reachable"
    error = json.loads(run.stderr.splitlines()[-1])["error"]
    assert "the TLS files for NATS do not load" in error["message"], error
