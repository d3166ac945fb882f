"""Ctrl-C in a command with no handler of its own (one waiting for a server that accepts
but does not answer) is the documented `cancelled` error, exit 130, in every group
(README "One error format in every group"): `streams ensure`, `omni *`, `process *` and
`ctx *` ended with exit 130 and nothing said, not even JSON with -o json (Typer's own
answer to KeyboardInterrupt). A ctx command names its idempotency key to retry with."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.cli.app import app
from jetsource.core import aio

COMMANDS = [
    (["streams", "ensure"], "cancelled"),
    (["omni", "raw", "show", "01890000-0000-7000-8000-000000000000"], "CANCELLED"),
    (["omni", "identity", "create", "--name", "x"], "CANCELLED"),
    (["omni", "identity", "resolve", "whatsapp", "123"], "CANCELLED"),
    (["process", "list"], "CANCELLED"),
    (["process", "show", "p1"], "CANCELLED"),
    (["ctx", "show", "c1"], "CANCELLED"),
    (["ctx", "list"], "CANCELLED"),
    (["ctx", "create", "c1", "--title", "t", "-k", "key-1"], "CANCELLED"),
]


@pytest.mark.parametrize(("argv", "code"), COMMANDS, ids=lambda a: " ".join(a))
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_ctrl_c_is_cancelled_exit_130(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], code: str, as_json: bool
) -> None:
    def interrupted(main: Any, bound: float | None = None) -> Any:
        main.close()  # never started: Ctrl-C came first
        raise KeyboardInterrupt

    monkeypatch.setattr(aio, "run", interrupted)
    monkeypatch.setenv("JETSOURCE_NATS__URL", "nats://127.0.0.1:1")
    result = CliRunner().invoke(app, [*(["-o", "json"] if as_json else []), *argv])
    assert result.exit_code == 130, result.output
    lines = result.stderr.strip().splitlines()
    if as_json:
        assert len(lines) == 1, lines
        error = json.loads(lines[0])["error"]
        assert error["code"] == code and error["exit_code"] == 130, error
        said = error["message"] + str(error.get("hint", ""))
    else:
        assert lines and lines[0].startswith(f"{code}: "), lines
        said = "\n".join(lines)
    assert "Ctrl-C" in said, said
    if "-k" in argv:
        assert "-k key-1" in said, said
