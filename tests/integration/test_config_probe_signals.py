"""A service stopped by SIGTERM ends with exit 0 even when a second stop signal
arrives while it is still ending (as supervisors and impatient operators send one):
the observer took about a second after its loop closed, when SIGTERM had its default
action again, and a second one made it exit 143."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.infra import Server

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("service", "section"), [("observer", "OBSERVER"), ("publisher", "PUBLISHER")]
)
@pytest.mark.parametrize("second_after_s", [0.05, 0.3])
def test_a_second_sigterm_while_stopping_still_ends_with_exit_0(
    service: str,
    section: str,
    second_after_s: float,
    nats_server: Server,
    unique: str,
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= {
        "JETSOURCE_SECRETS_DIR": str(tmp_path / "no-secrets"),
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path / "home"),
        "JETSOURCE_NATS__URL": nats_server.url,
        "JETSOURCE_LOG_JSON": "true",
        f"JETSOURCE_{section}__GRPC_PORT": "0",
        f"JETSOURCE_{section}__METRICS_PORT": "0",
        "JETSOURCE_EVENTSTORE__STREAM": f"SIG_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"sig{unique}.events",
        "JETSOURCE_SNAPSHOTS__STREAM": f"SIGSNAP_{unique}",
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": f"sigsnap{unique}.snapshots",
    }
    with subprocess.Popen(
        [str(BIN / f"jetsource-{service}")],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as process:
        assert process.stderr is not None
        try:
            deadline = time.monotonic() + 60
            said = []
            while time.monotonic() < deadline:
                line = process.stderr.readline()
                said.append(line)
                assert line, f"{service} ended before listening: {''.join(said)}"
                if "listening on" in json.loads(line)["message"]:
                    break
            time.sleep(1.0)  # its signal handling begins just after that line
            process.send_signal(signal.SIGTERM)
            time.sleep(second_after_s)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert code == 0


@pytest.mark.parametrize(
    ("service", "section"),
    [
        ("publisher", "PUBLISHER"),
        ("projector", "PROJECTOR"),
        ("query", "QUERY"),
        ("observer", "OBSERVER"),
        ("ingest", "INGEST"),
    ],
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_waiting_for_nats_ends_the_start_with_exit_0(
    service: str, section: str, sig: signal.Signals, tmp_path: Path
) -> None:
    """It was SIGTERM's default action: exit 143 and no word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= {
        "JETSOURCE_SECRETS_DIR": str(tmp_path / "no-secrets"),
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path / "home"),
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{closed}",
        "JETSOURCE_LOG_JSON": "true",
        f"JETSOURCE_{section}__GRPC_PORT": "0",
        f"JETSOURCE_{section}__METRICS_PORT": "0",
        f"JETSOURCE_{section}__HTTP_PORT": "0",
    }
    own = {"PROJECTOR": ("HTTP_PORT",), "INGEST": ("HTTP_PORT", "GRPC_PORT")}
    ports = own.get(section, ("GRPC_PORT", "METRICS_PORT"))
    env = {
        k: v
        for k, v in env.items()
        if not k.startswith(f"JETSOURCE_{section}__") or k.rsplit("__", 1)[1] in ports
    }
    with subprocess.Popen(
        [str(BIN / f"jetsource-{service}")],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        # a shell's background job would start with SIGINT ignored; this one does not
        restore_signals=True,
    ) as process:
        assert process.stderr is not None
        try:
            first = json.loads(process.stderr.readline())  # waiting for NATS, said
            assert "retrying" in first["message"], first
            process.send_signal(sig)
            code = process.wait(timeout=30)
            rest = process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
    assert code == 0, rest
    last = json.loads(rest.strip().splitlines()[-1])
    assert last["message"] == f"{service} stopped while starting"
