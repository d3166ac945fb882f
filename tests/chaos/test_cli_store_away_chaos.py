"""`projector rebuild` with the model's store (Valkey) refusing connections: after its
retries (~10 s of backoff, hence `make chaos`) the command ends with its one error,
`unavailable: valkey: ...` exit 3, and nothing after it. Before: the build's worker was
started before the checkpoint read that failed, and asyncio printed "Task exception
was never retrieved / future: <Task finished ... Worker.run() ...>" after the error
line (plain text even with -o json)."""

from __future__ import annotations

import json

import pytest

from jetsource.devstack.servers import free_port
from tests.cli_env import cli_env, jetsource, streams
from tests.infra import Server

pytestmark = pytest.mark.chaos


def test_rebuild_with_valkey_away_ends_on_its_error_alone(nats_server: Server, unique: str) -> None:
    env = cli_env(nats_server.url, unique, valkey_url=f"redis://127.0.0.1:{free_port()}/0")
    ensured = streams(env, "ensure")
    assert ensured.returncode == 0, ensured

    run = jetsource(env, "-o", "json", "projector", "rebuild", "context", "--to-version", "2")
    assert run.returncode == 3, run
    lines = run.stderr.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line JSON
    error = parsed[-1]["error"]
    assert error["code"] == "unavailable" and "valkey" in error["message"], error
    assert "never retrieved" not in run.stderr, run.stderr
