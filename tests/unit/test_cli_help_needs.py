"""Every command's --help says which server it needs and the setting that points at it
(the README's "Where the CLI connects"): the helps named none, so an operator with half
a stack up could not tell which server a command was waiting for."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from jetsource.cli.app import app

# Local or terminal commands: they name their servers in their own help.
NOT_ASKED = {"tui", "up", "down", "infra"}
SETTINGS = (
    "JETSOURCE_NATS__URL",
    "JETSOURCE_CLIENT__PUBLISHER",
    "JETSOURCE_CLIENT__QUERY",
    "JETSOURCE_CLIENT__PROCESS_QUERY",
    "JETSOURCE_CLIENT__OBSERVER",
)


def _leaves() -> list[list[str]]:
    root = typer.main.get_command(app)
    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        subs = getattr(command, "commands", None)
        if subs is None:
            found.append(path)
            return
        for name in list(subs):
            if not path and name in NOT_ASKED:
                continue
            walk(subs[name], [*path, name])

    walk(root, [])
    return found


LEAVES = _leaves()


def test_every_group_is_asked() -> None:
    groups = {path[0] for path in LEAVES}
    expected = {"ctx", "projector", "streams", "archive", "repair", "erase", "process"}
    assert groups >= expected | {"sessions", "omni", "observe"}, groups


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_help_names_what_it_needs(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Needs " in text, text
    if path != ["sessions", "catalog"]:
        assert any(s in text for s in SETTINGS), text
        assert "exit 3" in text, text
