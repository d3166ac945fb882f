"""What `jetsource` imports before it runs a command (no servers).

Every call paid ~0.6 s of imports (every group's clients: the archive, the graph
driver, the projection runtime, gRPC...), `--help` too: operators, scripts and the test
suite, which runs the command hundreds of times. The root now loads a group's module
only when its command runs, and the groups import their heavy modules in the commands
that use them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from jetsource.cli.app import app
from jetsource.cli.lazy import LazyCommands, reflow

GROUPS = (
    *("ctx", "projector", "streams", "archive", "repair", "observe", "process", "omni"),
    "sessions",
)
# What a group's help or a simple command has no use for.
HEAVY = ("neo4j", "jetsource.domains", "jetsource.projection.bootstrap", "jetsource.archive")


def imported(
    tmp_path: Path, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the real entry point (``main``) in a process of its own; the modules it had
    imported when it exited."""
    where = tmp_path / "modules.json"
    save = f"open({str(where)!r}, 'w').write(json.dumps(sorted(sys.modules)))"
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: {save})\n"
        "from jetsource.cli.app import main\n"
        "main()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JETSOURCE_OUTPUT": "", **env},
    )
    return run, set(json.loads(where.read_text()))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY)))


def test_help_imports_no_group(tmp_path: Path) -> None:
    run, modules = imported(tmp_path, "--help")
    assert run.returncode == 0 and "projector" in run.stdout, run
    assert not [
        m
        for m in modules
        if m.startswith("jetsource.cli.")
        and m
        not in (
            "jetsource.cli.app",
            "jetsource.cli.lazy",
            "jetsource.cli.output",
        )
    ], sorted(m for m in modules if m.startswith("jetsource.cli."))
    assert not heavy(modules)
    assert "grpc" not in modules and "nats" not in modules


@pytest.mark.parametrize("group", GROUPS)
def test_a_groups_help_imports_only_that_group(tmp_path: Path, group: str) -> None:
    run, modules = imported(tmp_path, group, "--help")
    assert run.returncode == 0 and "Usage:" in run.stdout, run
    others = {f"jetsource.cli.{g}" for g in GROUPS} - {f"jetsource.cli.{group}"}
    # process borrows the gRPC helpers of ctx; the NATS groups, those of projector.
    others -= {"jetsource.cli.ctx", "jetsource.cli.projector"}
    assert not others & modules, sorted(others & modules)
    assert not heavy(modules), heavy(modules)


def test_a_simple_command_imports_what_it_uses(tmp_path: Path) -> None:
    """`ctx create` against a publisher that is not there: the gRPC client, not the
    domains, the graph driver or the other groups."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"
    run, modules = imported(tmp_path, "ctx", "create", "s", "--title", "t", "--publisher", nobody)
    assert run.returncode == 3 and "not reachable" in run.stderr, run
    assert "grpc" in modules
    assert not heavy(modules), heavy(modules)
    assert not {f"jetsource.cli.{g}" for g in GROUPS if g != "ctx"} & modules


def test_the_roots_help_lines_are_the_commands_own() -> None:
    """The root lists each command's help without importing it: the lines it keeps
    must be the ones the command itself has."""
    group = typer.main.get_command(app)
    commands = getattr(group, "commands", None)
    assert isinstance(commands, LazyCommands)
    assert list(commands) == [
        *("tui", "erase", "up", "down", "infra", "ctx", "projector", "streams", "archive"),
        *("repair", "observe", "process", "sessions", "omni"),
    ]
    for name, entry in commands.entries.items():
        command = commands[name]
        assert command.name == name
        assert command.help == reflow(entry.help), name
        assert hasattr(command, "commands") == entry.group, name


def test_json_mode_reaches_groups_loaded_later(tmp_path: Path) -> None:
    """With -o json a group called without a command says so as JSON, also for a group
    loaded after the root was built (it printed its help on stdout)."""
    run, _ = imported(tmp_path, "-o", "json", "projector", "dlq")
    assert run.returncode == 2 and run.stdout == "", run
    assert "Missing command: one of discard, list, retry, show." in run.stderr
    run, _ = imported(tmp_path, "-o", "json")
    assert run.returncode == 2 and run.stdout == "", run
    error = json.loads(run.stderr)["error"]
    assert error["message"].startswith("Missing command: one of archive, ctx, down, erase")


def test_a_domain_module_does_not_build_the_registry() -> None:
    """Any ``jetsource.domains.<x>`` import runs the package's ``__init__``: it used to
    import every domain's descriptor (the graph driver, Valkey, the projection runtime)."""
    code = (
        "import sys\n"
        "import jetsource.domains.omni.settings, jetsource.domains.sessions.record\n"
        "print(sorted(m for m in sys.modules if m == 'neo4j'\n"
        "    or m.startswith('jetsource.domains.') and m.endswith('.descriptor')))\n"
        "from jetsource.domains import REGISTRY\n"
        "print(sorted(d.name for d in REGISTRY))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[]", "['context', 'omni', 'process']"], run.stdout


def test_the_sessions_help_names_the_records_statuses() -> None:
    """`sessions list --status` names the statuses without importing the record."""
    from jetsource.cli import sessions
    from jetsource.domains.sessions.record import STATUSES

    assert sessions.STATUSES == STATUSES
