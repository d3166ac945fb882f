"""`projector dlq list|retry|discard --aggregate X` check X before they connect: it was
taken as it was, after connecting (NATS away: UNAVAILABLE, exit 3, for an id no story
has), and put in the dead-letter subject, where '*' matched every story's letters.
A usage error naming --aggregate now (exit 2, INVALID_ARGUMENT), whatever NATS is."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.app import app
from jetsource.projection.admin import UsageError, validate_aggregate
from tests.cli_env import clean_environ


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("aggregate", ["*", "a b", "s1.>", ""])
@pytest.mark.parametrize(
    "args",
    [
        ("projector", "dlq", "list"),
        ("projector", "dlq", "retry"),
        ("projector", "dlq", "discard", "--yes"),
    ],
)
def test_a_malformed_aggregate_is_refused_before_anything_connects(
    args: tuple[str, ...], aggregate: str
) -> None:
    env = clean_environ() | {"JETSOURCE_NATS__URL": _closed_port()}
    result = CliRunner().invoke(
        app, ["-o", "json", *args, "--aggregate", aggregate], env=env, catch_exceptions=False
    )
    out.set_mode(None)
    error = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert result.exit_code == 2, (result.exit_code, error)
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "--aggregate", error


def test_a_story_id_is_an_aggregate() -> None:
    validate_aggregate("story-1")
    validate_aggregate(None)
    validate_aggregate("_")  # deadletters.NO_STORY: letters of subjects naming no story
    with pytest.raises(UsageError) as refused:
        validate_aggregate("*")
    assert refused.value.field == "--aggregate"


@pytest.mark.parametrize(
    "args",
    [
        ("projector", "dlq", "list"),
        ("projector", "dlq", "retry"),
        ("projector", "dlq", "discard", "--yes"),
    ],
)
def test_the_aggregate_of_no_story_is_taken(args: tuple[str, ...]) -> None:
    """'_' (deadletters.NO_STORY) is the aggregate dlq list shows for the letters of
    messages on subjects naming no story: taken (9a0a370 refused it), so the command
    goes on to connect (a closed port here: UNAVAILABLE, exit 3)."""
    env = clean_environ() | {"JETSOURCE_NATS__URL": _closed_port()}
    env["JETSOURCE_ADMIN_REFUSED_WAIT_S"] = "0.01"  # not a terminal: said at once all the same
    result = CliRunner().invoke(
        app, ["-o", "json", *args, "--aggregate", "_"], env=env, catch_exceptions=False
    )
    out.set_mode(None)
    error = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert result.exit_code == 3, (result.exit_code, error)  # NATS unreachable, not usage
    assert "not reachable" in error["message"] and error.get("field") != "--aggregate", error
