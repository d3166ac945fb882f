"""A CLI option that must say something is empty by the one rule of empty text
(core.printable.blank: nothing visible), as repair void's --reason and the context
commands' titles are. `projector replay --actor`, `repair void --domain` and the
archive's `--domain` had their own strip(): a zero-width space, a Hangul filler or a
bidi mark alone passed as a domain, naming none. Each is a usage error (exit 2,
INVALID_ARGUMENT) naming the option now, before anything connects. Replay's --actor is
the exception: it selects what the context write path recorded, and that path takes
an actor showing nothing, so only "" (and what no write path records) is refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.app import app
from jetsource.projection.admin import UsageError, validate_slice

NOTHING_VISIBLE = ["\u200b", "\u3164", "\u00a0\u202e", "\ufe0f", " "]


def run(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(app, ["-o", "json", *args], catch_exceptions=False)
    out.set_mode(None)
    lines = result.stderr.strip().splitlines()
    return result.exit_code, json.loads(lines[-1])["error"] if lines else {}


@pytest.mark.parametrize("actor", NOTHING_VISIBLE)
def test_a_replay_actor_showing_nothing_is_one_the_write_path_records(actor: str) -> None:
    """The context write path takes and records such an actor (its one-line rule):
    replay selects it as recorded (tests/integration/test_replay_actor_as_recorded.py)."""
    validate_slice(None, "context", actor=actor)


def test_an_empty_replay_actor_is_refused_naming_the_option() -> None:
    with pytest.raises(UsageError, match="--actor must not be empty") as refused:
        validate_slice(None, "context", actor="")
    assert refused.value.field == "--actor"
    code, error = run("projector", "replay", "context", "--actor", "")
    assert code == 2, error
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "--actor", error


@pytest.mark.parametrize("actor", ["ana\nbob", "\x1b[2J", "a\u2028b"])
def test_a_replay_actor_no_write_path_records_is_refused_naming_the_option(actor: str) -> None:
    code, error = run("projector", "replay", "context", "--actor", actor)
    assert code == 2, error
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "--actor", error
    assert "one line" in str(error["message"]), error


def test_a_replay_actor_of_rtl_text_is_an_actor() -> None:
    validate_slice(None, "context", actor="\u05d3\u05e0\u05d4\u200f")


@pytest.mark.parametrize("domain", NOTHING_VISIBLE)
def test_a_void_domain_showing_nothing_is_refused_naming_it(domain: str) -> None:
    code, error = run("repair", "void", "--seq", "7", "--reason", "r", "--yes", "--domain", domain)
    assert code == 2, error
    assert error["field"] == "--domain" and "must name a domain" in str(error["message"]), error


@pytest.mark.parametrize("domain", NOTHING_VISIBLE)
def test_an_archive_domain_showing_nothing_is_refused_naming_it(domain: str) -> None:
    result = CliRunner().invoke(app, ["archive", "list", "--domain", domain])
    assert result.exit_code == 2, result.stderr
    assert "name a domain (or leave --domain out" in " ".join(result.stderr.split())
