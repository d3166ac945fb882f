"""A page of `process list` / `process timeline` that has more after it says so on
stderr, `more ...: --page-token T (or --all)`, as `ctx list` / `ctx events` do
(README "Command line", docs/process-ledger.md): stdout holds only the table. The
process commands printed `next page: --page-token T` on stdout, after the
tab-separated table a script was reading."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.cli import process
from jetsource.cli.app import app

TOKEN = "AQAAAAAAAAAGKS06JIFoMV2AxQIosa_Jjg"


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["process", "list", "--page-size", "1"], "processes"),
        (["process", "timeline", "p1", "--page-size", "1"], "events"),
    ],
    ids=["list", "timeline"],
)
def test_the_next_page_token_goes_to_stderr(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], what: str
) -> None:
    def one_page(target: Any, work: Any, **_: Any) -> tuple[list[Any], str]:
        return [], TOKEN

    monkeypatch.setattr(process, "_call", one_page)
    plain = CliRunner().invoke(app, ["-o", "plain", *argv])
    assert plain.exit_code == 0, plain.output
    assert TOKEN not in plain.stdout, plain.stdout
    assert f"more {what}: --page-token {TOKEN} (or --all)" in plain.stderr, plain.stderr
    as_json = CliRunner().invoke(app, ["-o", "json", *argv])
    assert as_json.exit_code == 0 and as_json.stderr == "", as_json.stderr
    assert json.loads(as_json.stdout)["next_page_token"] == TOKEN
