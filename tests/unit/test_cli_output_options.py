"""Every command that prints data takes both ``--json`` and ``-o/--output json``, with
the same result. The ctx, process and observe commands took only ``-o json`` ("No such
option: --json"); the projector, streams, archive, repair, erase and omni commands only
``--json`` (``-o json`` only before the group, as the global option)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from jetsource.cli.app import app
from tests.cli_env import clean_environ

# Commands that print no data of their own (they stop or draw a terminal UI). `up`,
# `infra up` and `infra status` print their table (JSON with the global --output json)
# and took neither --json nor -o (fix10c2).
NO_OUTPUT = {"tui", "down", "infra down"}


def leaves(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    subs = getattr(command, "commands", None)
    if subs is None:
        return [(" ".join(path), command)]
    return [leaf for name in list(subs) for leaf in leaves(subs[name], (*path, name))]


def test_every_command_takes_json_and_output_json() -> None:
    commands = leaves(typer.main.get_command(app))
    assert len(commands) > 40
    for path, command in commands:
        taken = {o for p in command.params for o in getattr(p, "opts", ())}
        if path in NO_OUTPUT:
            assert not taken & {"--json", "--output"}, path  # a new one: list it here
            continue
        assert {"--json", "--output"} <= taken, (path, sorted(taken))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "args",
    [["process", "list"], ["ctx", "list"], ["projector", "status"], ["omni", "raw", "show", "x"]],
    ids=["process", "ctx", "projector", "omni"],
)
def test_json_and_output_json_answer_alike(args: list[str]) -> None:
    port = closed_port()
    env = clean_environ() | {
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{port}",
        "JETSOURCE_CLIENT__QUERY": f"127.0.0.1:{port}",
        "JETSOURCE_CLIENT__PROCESS_QUERY": f"127.0.0.1:{port}",
        "JETSOURCE_ADMIN_REFUSED_WAIT_S": "0.01",  # not a terminal: said at once all the same
    }
    said = []
    for flags in (["--json"], ["-o", "json"], ["--output", "json"]):
        run = subprocess.run(
            [sys.executable, "-m", "jetsource", *args, *flags],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 3, (flags, run.stderr)
        said.append(json.loads(run.stderr.splitlines()[0]))  # JSON, whichever flag
    assert said[0] == said[1] == said[2]


def test_infra_status_takes_json_and_output_json(tmp_path: Path) -> None:
    """`infra status --json` / `-o json` print what `--output json infra status` does
    (they were "No such option")."""
    env = clean_environ() | {
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path / "home"),
        **{
            f"JETSOURCE_DEVSTACK__{name}": str(closed_port())
            for name in (
                "NATS_PORT",
                "NATS_MONITOR_PORT",
                "VALKEY_PORT",
                "GRAPH_HTTP_PORT",
                "GRAPH_BOLT_PORT",
            )
        },
    }
    said = []
    for argv in (
        ["--output", "json", "infra", "status"],
        ["infra", "status", "--json"],
        ["infra", "status", "-o", "json"],
    ):
        run = subprocess.run(
            [sys.executable, "-m", "jetsource", *argv],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 1, run.stderr  # nothing runs: not healthy
        said.append(json.loads(run.stdout))
    assert said[0] == said[1] == said[2]
    assert [s["name"] for s in said[0]["servers"]] == ["nats", "valkey", "graph"]
