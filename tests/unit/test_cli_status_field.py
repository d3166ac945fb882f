"""A `--status` the command does not take is a usage error naming ``--status`` in JSON, as
every other refused option is (`ctx list`, `ctx subtask` and `process list` left the
field out; `sessions list` had it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "args",
    [
        ["ctx", "list", "--status", "bogus"],
        ["ctx", "subtask", "s1", "t1", "--status", "bogus"],
        ["process", "list", "--status", "bogus"],
    ],
)
def test_a_status_the_command_does_not_take_names_the_option(args: list[str]) -> None:
    run = subprocess.run(
        [sys.executable, "-c", "from jetsource.cli.app import main; main()", "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JETSOURCE_OUTPUT": ""},
    )
    assert run.returncode == 2 and run.stdout == "", run
    error = json.loads(run.stderr)["error"]
    assert (error["code"], error["field"]) == ("INVALID_ARGUMENT", "--status"), error
    assert "--status" in error["message"]
