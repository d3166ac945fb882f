"""SIGTERM (`kill`, `timeout`, a CI limit, systemd) on a `jetsource` command stops it
as Ctrl-C does: exit 130, one ``cancelled`` line saying how to go on. It was the
default action: exit 143 in silence, a replay or reset left ``running`` in ``status``
(``tests/integration/test_admin_sigterm.py``) - also for a command started in the
background from a script, where SIGINT is ignored."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script gets


@pytest.mark.parametrize("sigint_ignored", [False, True])
def test_sigterm_while_waiting_for_nats_is_cancelled_exit_130(sigint_ignored: bool) -> None:
    with socket.socket() as silent:  # accepts, never speaks: NATS that does not answer
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(20)
        port = silent.getsockname()[1]
        env = os.environ | {
            "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{port}",
            "JETSOURCE_NATS__CONNECT_TIMEOUT_S": "30",
        }
        child = subprocess.Popen(
            [sys.executable, "-m", "jetsource", "-o", "json", "streams", "ensure"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_ignore_sigint if sigint_ignored else None,
        )
        conn, _ = silent.accept()  # the command is running, connecting
        try:
            child.send_signal(signal.SIGTERM)
            _out, err = child.communicate(timeout=20)
        finally:
            conn.close()
    assert child.returncode == 130, (child.returncode, err)
    lines = [line for line in err.decode().splitlines() if line.startswith("{")]
    error = json.loads(lines[-1])["error"]
    assert error["code"] == "cancelled", error
