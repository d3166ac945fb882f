"""Servers a test session started stop when pytest is stopped by SIGTERM (a CI time
limit) or SIGINT, not only at a normal exit (#18): nothing is left orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jetsource.core.procs import pid_alive

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

HOLD = """
import os, time
from pathlib import Path

def test_hold(nats_server):
    Path(os.environ["PID_FILE"]).write_text(str(nats_server.proc.pid))
    time.sleep(300)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_session_stops_its_servers(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "test_hold.py").write_text(HOLD)
    pid_file = tmp_path / "nats.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_TEST_")}
    env["PID_FILE"] = str(pid_file)
    session = subprocess.Popen(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
            "--rootdir", str(tmp_path), str(tmp_path / "test_hold.py"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    nats_pid = None
    try:
        deadline = time.monotonic() + 60
        while nats_pid is None and time.monotonic() < deadline:
            assert session.poll() is None, session.communicate()[0].decode()
            if pid_file.exists() and pid_file.read_text():
                nats_pid = int(pid_file.read_text())
            time.sleep(0.1)
        assert nats_pid is not None and pid_alive(nats_pid)
        session.send_signal(sig)
        session.wait(timeout=30)
        deadline = time.monotonic() + 10
        while pid_alive(nats_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(nats_pid), f"nats-server (pid {nats_pid}) outlived pytest's {sig.name}"
    finally:
        if session.poll() is None:
            session.kill()
        if nats_pid is not None and pid_alive(nats_pid):
            os.kill(nats_pid, signal.SIGKILL)
