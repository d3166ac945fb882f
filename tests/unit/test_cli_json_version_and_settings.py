"""``-o json`` for what the command line says before any command runs.

``python -m jetsource -o json --version`` printed its text line (``jetsource 0.1.0``)
where a script parsing stdout as JSON expects JSON: it is ``{"version": ...}``, with
``-o json`` before or after ``--version`` or ``JETSOURCE_OUTPUT=json``. And a setting
that does not parse (a bad JETSOURCE_* variable) named the variable in the message
only: its JSON error has ``field`` naming it, as every other usage error names its
option. The real entry point, in a process of its own."""

from __future__ import annotations

import json
import os
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


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--version", "-o", "table"], {"JETSOURCE_OUTPUT": "json"}),
        (["-o", "json", "-o", "table", "--version"], {}),
        (["--output=json", "--version", "-oplain"], {}),
    ],
    ids=["line-over-env", "last-o", "last-short"],
)
def test_version_takes_the_last_output_asked(args: list[str], env: dict[str, str]) -> None:
    # The command line wins over the environment, the last -o over an earlier one, as
    # --output itself reads them: it printed JSON for any -o json or the environment.
    run = jetsource(*args, **env)
    assert run.returncode == 0 and run.stdout == f"jetsource {__version__}\n", run.stdout


def test_version_last_output_json_is_json() -> None:
    run = jetsource("-o", "table", "--version", "-o", "json", JETSOURCE_OUTPUT="plain")
    assert json.loads(run.stdout) == {"version": __version__}


def _error_of(env: dict[str, str]) -> Exception:
    from jetsource.core.settings import JetsourceSettings

    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("JETSOURCE_")]:
            mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        with pytest.raises(Exception) as caught:
            JetsourceSettings.load()
    return caught.value


def test_a_sections_own_check_names_the_variables_its_message_names() -> None:
    from jetsource.cli import output

    exc = _error_of({"JETSOURCE_EVENTSTORE__RETENTION": "age"})
    # Was JETSOURCE_EVENTSTORE: a prefix, no variable (the section's model validator).
    assert output.settings_fields(exc) == [  # type: ignore[arg-type]
        "JETSOURCE_EVENTSTORE__RETENTION",
        "JETSOURCE_EVENTSTORE__MAX_AGE_S",
    ]


def test_a_list_index_is_no_part_of_the_variable() -> None:
    import pydantic
    import pydantic_settings

    from jetsource.cli import output

    class Inner(pydantic.BaseModel):
        port: int

    class Settings(pydantic_settings.BaseSettings):
        instances: list[Inner] = []
        hosts: list[int] = []

    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(instances=[{"port": "x"}], hosts=[1, "y"])  # type: ignore[list-item]
    # Was JETSOURCE_INSTANCES__0__PORT and JETSOURCE_HOSTS__1: no such variables.
    assert output.settings_fields(caught.value) == ["JETSOURCE_INSTANCES", "JETSOURCE_HOSTS"]


def test_a_sections_check_naming_nothing_has_no_field() -> None:
    import pydantic
    import pydantic_settings

    from jetsource.cli import output

    class Section(pydantic.BaseModel):
        a: int = 0

        @pydantic.model_validator(mode="after")
        def _never(self) -> Section:
            raise ValueError("this section is refused")

    class Settings(pydantic_settings.BaseSettings):
        section: Section = Section.model_construct()
        table: dict[str, int] = {}

        @pydantic.field_validator("table")
        @classmethod
        def _table(cls, value: dict[str, int]) -> dict[str, int]:
            raise ValueError("no table")

    with pytest.raises(pydantic.ValidationError) as caught:
        Settings(section={"a": 1}, table={"k": 1})  # type: ignore[arg-type]
    # The section is a prefix (no field); a dict setting's own check names it.
    assert output.settings_fields(caught.value) == ["JETSOURCE_TABLE"]


@pytest.mark.parametrize("value", ["5", '"x"', "[]"])
def test_a_section_set_to_no_object_names_the_sections_variable(value: str) -> None:
    from jetsource.cli import output

    exc = _error_of({"JETSOURCE_EVENTSTORE": value})
    # The section's variable is the one at fault (67ac680 gave no field: it took the
    # type error for the section's own check, whose message names no setting).
    assert output.settings_fields(exc)[:1] == ["JETSOURCE_EVENTSTORE"]  # type: ignore[arg-type]
