"""A NATS server that runs without JetStream (started without -js, or JetStream off for
the account): every command that reads or writes a stream says so, naming the server and
its setting, `unavailable` exit 3 (README "Exit codes"), one JSON line with -o json.

Before: `projector *`, `erase` and `omni identity resolve` said 'INTERNAL: unexpected
ServiceUnavailableError: nats: ServiceUnavailableError: code=None ... (a bug)', `streams
ensure` / `backup` 'INTERNAL: unexpected NoRespondersError: _INBOX...' (all exit 1), and
`archive *`, `repair void`, `sessions *` and the other omni commands that a stream
"does not exist" with the hint to run `jetsource streams ensure` (which failed in turn)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetsource.devstack.servers import _venv_bin, free_port
from tests.cli_env import cli_env, jetsource

CASES = [
    ("projector", "status"),
    ("projector", "dlq", "list"),
    ("projector", "replay", "context", "--from-seq", "1"),
    ("erase", "alice", "--yes"),
    ("repair", "void", "--seq", "1", "--reason", "x", "--yes"),
    ("streams", "ensure", "--timeout", "5"),
    ("streams", "backup", "{tmp}/backup"),
    ("archive", "export"),
    ("sessions", "list"),
    ("omni", "identity", "resolve", "whatsapp", "123"),
    ("omni", "identity", "create", "--name", "x"),
]


@pytest.fixture(scope="module")
def nats_without_jetstream() -> Iterator[str]:
    """A nats-server of its own with JetStream off (the session's has it on)."""
    port = free_port()
    server = subprocess.Popen(
        [str(_venv_bin("nats-server")), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket
        import time

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_jetstream_off_is_named_unavailable_exit_3(
    nats_without_jetstream: str, unique: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    (tmp_path / "backup").mkdir()
    args = tuple(a.format(tmp=tmp_path) for a in args)
    env = cli_env(
        nats_without_jetstream,
        unique,
        JETSOURCE_ARCHIVE__URL=str(tmp_path / "archive"),
        JETSOURCE_ADMIN_CONNECT_TIMEOUT_S="3",
    )
    run = jetsource(env, *args)
    assert run.returncode == 3, run
    first = run.stderr.splitlines()[0]
    assert "JetStream is not enabled on NATS at " + nats_without_jetstream in first, run.stderr
    assert "JETSOURCE_NATS__URL" in run.stderr, run.stderr
    assert "INTERNAL" not in run.stderr and "Traceback" not in run.stderr
    assert "does not exist" not in run.stderr, run.stderr

    run = jetsource(env, "-o", "json", *args)
    assert run.returncode == 3, run
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    error = json.loads(lines[0])["error"]
    assert error["exit_code"] == 3 and error["code"].lower() == "unavailable", error
    assert "JetStream is not enabled" in error["message"], error
