"""``-o json`` for what the command line says before any command runs.

``python -m jetsource -o json --version`` printed its text line (``jetsource 0.1.0``)
where a script parsing stdout as JSON expects JSON: it is ``{"version": ...}``, with
``-o json`` before or after ``--version`` or ``JETSOURCE_OUTPUT=json``. And a setting
that does not parse (a bad JETSOURCE_* variable) named the variable in the message
only: its JSON error has ``field`` naming it, as every other usage error names its
option. The real entry point, in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jetsource import __version__
from tests.cli_env import clean_environ


def jetsource(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetsource", *args],
        env=clean_environ() | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["-o", "json", "--version"], {}),
        (["--version", "-o", "json"], {}),
        (["--output=json", "--version"], {}),
        (["--version"], {"JETSOURCE_OUTPUT": "json"}),
    ],
    ids=["before", "after", "equals", "env"],
)
def test_version_asked_for_json_is_json(args: list[str], env: dict[str, str]) -> None:
    run = jetsource(*args, **env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"version": __version__}  # was 'jetsource 0.1.0'
    assert run.stderr == ""


@pytest.mark.parametrize("args", [["--version"], ["-o", "plain", "--version"]])
def test_version_otherwise_is_its_line(args: list[str]) -> None:
    run = jetsource(*args)
    assert run.returncode == 0 and run.stdout == f"jetsource {__version__}\n"


@pytest.mark.parametrize(
    ("argv", "variable"),
    [
        (["sessions", "list"], "JETSOURCE_SESSIONS__PRUNE_KEEP"),
        (["ctx", "show", "x"], "JETSOURCE_CLIENT__TIMEOUT_S"),
    ],
    ids=["raised", "ctx"],
)
def test_a_bad_setting_names_its_variable_as_the_field(argv: list[str], variable: str) -> None:
    run = jetsource("-o", "json", *argv, **{variable: "abc"})
    assert run.returncode == 2, run.stderr
    error = json.loads(run.stderr.splitlines()[-1])["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field"] == variable, error  # was no field: the message alone named it
    assert error["message"].startswith(f"bad setting: {variable}='abc'")


def test_text_says_the_bad_setting_once() -> None:
    run = jetsource("sessions", "list", JETSOURCE_SESSIONS__PRUNE_KEEP="abc")
    assert run.returncode == 2
    assert "JETSOURCE_SESSIONS__PRUNE_KEEP='abc'" in run.stderr
    assert "(field:" not in run.stderr  # the message names it already
