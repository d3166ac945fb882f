"""Ctrl-C is how a watch ends: `ctx watch` and `process watch` exit 0 with nothing on
stderr (README "Command line", docs/process-ledger.md "Reading"). `process watch` had
its own `except KeyboardInterrupt: exit 0`, but the shared runner turned the interrupt
into `CANCELLED: stopped (Ctrl-C) before an answer came`, exit 130, after the events it
had already printed."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.cli.app import app
from jetsource.core import aio

WATCHES = [
    ["ctx", "watch", "c1"],
    ["process", "watch", "p1"],
    ["process", "watch", "p1", "--subtree", "--after", "5"],
]


@pytest.mark.parametrize("argv", WATCHES, ids=lambda a: " ".join(a))
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_ctrl_c_ends_a_watch_with_exit_0(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], as_json: bool
) -> None:
    def interrupted(main: Any, bound: float | None = None) -> Any:
        main.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(aio, "run", interrupted)
    result = CliRunner().invoke(app, [*(["-o", "json"] if as_json else []), *argv])
    assert result.exit_code == 0, (result.exit_code, result.stderr)
    assert result.stderr == "", result.stderr
