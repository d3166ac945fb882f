"""`jetsource sessions show|export|follow ID` refuse a malformed session id before they
connect, naming session_id: the id was checked by the first read, so with NATS away
the answer was UNAVAILABLE for an id no session can have (and with NATS there it named
"aggregate_id", no field of the command). Against a real nats-server (and a closed
port)."""

from __future__ import annotations

import json
import socket

import pytest

from tests.cli_env import cli_env, jetsource
from tests.infra import Server

pytestmark = pytest.mark.integration


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("command", ["show", "export", "follow"])
@pytest.mark.parametrize("where", ["no sessions stream", "NATS away"])
def test_a_malformed_session_id_is_invalid_argument_before_anything_connects(
    nats_server: Server, unique: str, command: str, where: str
) -> None:
    url = nats_server.url if where == "no sessions stream" else _closed_port()
    env = cli_env(
        url,
        unique,
        JETSOURCE_SESSIONS__STREAM=f"SESS_{unique}",
        JETSOURCE_SESSIONS__SUBJECT_PREFIX=f"sess{unique}.events",
    )
    run = jetsource(env, "-o", "json", "sessions", command, "bad id")
    error = json.loads(run.stderr.splitlines()[-1])["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "session_id", run.stderr
    assert "'bad id' is invalid" in error["message"], error
    assert run.returncode == 1, run
