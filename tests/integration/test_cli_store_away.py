"""A read model's store (Valkey) that stays away while a projector command works:
after its retries the command says so as every group does, `unavailable: ...` exit 3
(retry later), never `INTERNAL: unexpected TransientError` (exit 1, "a bug"), and
with `-o json` every stderr line is JSON: the retry warnings were plain text before."""

from __future__ import annotations

import json

from jetsource.devstack.servers import free_port
from tests.cli_env import cli_env, jetsource, streams
from tests.infra import Server


def test_replay_with_valkey_away_is_unavailable_exit_3(nats_server: Server, unique: str) -> None:
    env = cli_env(nats_server.url, unique, valkey_url=f"redis://127.0.0.1:{free_port()}/0")
    ensured = streams(env, "ensure")
    assert ensured.returncode == 0, ensured

    run = jetsource(env, "-o", "json", "projector", "replay", "context", "--from-seq", "1")
    assert run.returncode == 3, run
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    assert all("warning" in line for line in lines[:-1]) and len(lines) > 1, lines
    error = lines[-1]["error"]
    assert error["code"] == "unavailable" and error["exit_code"] == 3, error
    assert "valkey" in error["message"] and "JETSOURCE_VALKEY__URL" in error["hint"], error
    assert "INTERNAL" not in run.stderr
