"""`jetsource tui` where there is no terminal (piped, in a script, under CI): a usage
error naming what it needs and what to run instead, exit 2, JSON with `-o json`. It
drew its screen's escape codes into the pipe and never ended."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cli_env import clean_environ, jetsource


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_the_tui_without_a_terminal_is_a_usage_error(as_json: bool) -> None:
    args = ("-o", "json", "tui") if as_json else ("tui",)
    try:
        run = jetsource(clean_environ(), *args, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("jetsource tui without a terminal did not end")
    assert run.returncode == 2, run
    assert run.stdout == "", run.stdout[:200]
    if as_json:
        error = json.loads(run.stderr)["error"]
        assert error["exit_code"] == 2 and "needs a terminal" in error["message"], error
    else:
        assert run.stderr.startswith("INVALID_ARGUMENT: jetsource tui needs a terminal"), run
        assert "sessions list" in run.stderr
