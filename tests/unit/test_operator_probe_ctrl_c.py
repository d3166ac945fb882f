"""Ctrl-C on every NATS admin command that writes says what it left and how to go on
(exit 130, code ``cancelled``): `erase`, `repair void`, `projector drop`, `dlq retry`
and `dlq discard` said only "stopped (Ctrl-C)"."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.cli.app import app
from jetsource.core import aio

COMMANDS = [
    (["erase", "ana", "--yes"], "run the same erase again"),
    (["repair", "void", "--seq", "7", "--reason", "bad", "--yes"], "run the same command again"),
    (["projector", "drop", "context", "--version", "2"], "run the same command again"),
    (["projector", "dlq", "retry", "--seq", "3"], "run the same command again"),
    (["projector", "dlq", "discard", "--seq", "3", "--yes"], "run the same command again"),
    (["projector", "replay", "context", "--aggregate", "s1"], "run the same command again"),
    (["projector", "rebuild", "context", "--to-version", "2"], "run the same command again"),
    (["projector", "reset", "context", "--yes"], "run the same command again"),
    # Their code was "interrupted": one code for Ctrl-C in every group.
    (["archive", "export"], "run it again"),
    (["archive", "restore", "NEW", "--subject-prefix", "context=new"], "run the same restore"),
    (["streams", "backup", "{tmp}"], "nothing"),
]


@pytest.mark.parametrize(("argv", "said"), COMMANDS)
def test_ctrl_c_says_how_to_go_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, argv: list[str], said: str
) -> None:
    def interrupted(main: Any, bound: float | None = None) -> Any:
        main.close()  # never started: Ctrl-C came first
        raise KeyboardInterrupt

    monkeypatch.setattr(aio, "run", interrupted)
    monkeypatch.setenv("JETSOURCE_NATS__URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("JETSOURCE_ARCHIVE__URL", str(tmp_path / "archive"))
    argv = [a.replace("{tmp}", str(tmp_path / "backup")) for a in argv]
    result = CliRunner().invoke(app, ["-o", "json", *argv])
    assert result.exit_code == 130, result.output
    error = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "cancelled"
    assert said in error["message"], error
