"""A CLI command against a NATS URL where nothing listens (a closed port) waited out
its connect timeout (JETSOURCE_ADMIN_CONNECT_TIMEOUT_S, 10 s; 12-16 s with nats-py's
reconnects behind it; the sessions and omni groups 6 s) before saying "not reachable
(...: Connection refused)". A refused connection ends the command at once now (one
TCP try per server of the URL), exit 3, saying so ("NATS at URL is not reachable
(...: Connection refused)"; it kept "did not answer within 10 s", a wait it no longer
made); a server that takes the connection and does not answer is still waited for
(the documented 10 s: tests/unit/test_cli_nats_silent.py). "At once" is for a person
(stdin a terminal: a refusal is tried again for 1.5 s); a job waits out a restarting
NATS (fix10c2: tests/integration/test_cli_nats_comes_up.py)."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_env import clean_environ


def closed_port() -> int:
    """A port bound, then closed: nothing listens on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "args",
    [
        ["projector", "status"],
        ["erase", "subject-1", "--yes"],
        ["archive", "list"],
        ["streams", "backup", "{out}"],
        ["sessions", "list"],
        ["omni", "raw", "show", "x"],
    ],
    ids=["projector", "erase", "archive", "streams", "sessions", "omni"],
)
def test_a_refused_connection_fails_at_once(args: list[str], tmp_path: Path) -> None:
    port = closed_port()
    env = clean_environ() | {"JETSOURCE_NATS__URL": f"nats://127.0.0.1:{port}"}
    argv = [a.format(out=tmp_path / "backup") for a in args]
    env.pop("JETSOURCE_ADMIN_REFUSED_WAIT_S", None)
    primary, terminal = pty.openpty()  # a person typed it
    started = time.monotonic()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "jetsource", "-o", "json", *argv],
            env=env,
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(primary)
        os.close(terminal)
    took = time.monotonic() - started
    assert run.returncode == 3, run.stderr
    error = json.loads(run.stderr.splitlines()[0])["error"]
    # It said "did not answer within 10 s: not reachable (...)", a wait it no longer makes.
    assert error["message"] == (
        f"NATS at nats://127.0.0.1:{port} is not reachable (127.0.0.1:{port}: Connection refused)"
    )
    assert took < 5.0, took  # was 6 s (sessions, omni) to 16 s (projector)
