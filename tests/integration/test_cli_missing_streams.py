"""Read commands against a NATS server that has none of their streams: each names the
missing stream and the command that creates it, with the documented exit code (sessions
3 unavailable, as for NATS down; projector 1 refused, as its StreamMissingError), never
INTERNAL. `sessions list` and `prune` said 'INTERNAL: unexpected NoRespondersError:
PROCESS_EVENTS (a bug...)', `projector dlq show` the same for its dead-letter stream."""

from __future__ import annotations

import json

import pytest

from tests.cli_env import cli_env, jetsource
from tests.infra import Server

CASES = [
    (("sessions", "list"), "SESS_{u}", 3, "UNAVAILABLE"),
    (("sessions", "prune", "--dry-run"), "SESS_{u}", 3, "UNAVAILABLE"),
    (("sessions", "show", "s1"), "SESS_{u}", 3, "UNAVAILABLE"),
    (("sessions", "export", "s1"), "SESS_{u}", 3, "UNAVAILABLE"),
    (("projector", "dlq", "show", "1"), "DLQ_{u}", 1, "refused"),
]


@pytest.mark.parametrize(("args", "stream", "code", "status"), CASES, ids=lambda c: str(c))
def test_a_missing_stream_is_named_with_the_command_that_creates_it(
    nats_server: Server, unique: str, args: tuple[str, ...], stream: str, code: int, status: str
) -> None:
    env = cli_env(
        nats_server.url,
        unique,
        JETSOURCE_SESSIONS__STREAM=f"SESS_{unique}",
        JETSOURCE_SESSIONS__SUBJECT_PREFIX=f"sess{unique}.events",
    )
    name = stream.format(u=unique)
    run = jetsource(env, *args)
    assert run.returncode == code, run
    assert run.stderr.startswith(f"{status}: "), run.stderr
    assert name in run.stderr and "jetsource streams ensure" in run.stderr, run.stderr
    assert "INTERNAL" not in run.stderr

    run = jetsource(env, "-o", "json", *args)
    error = json.loads(run.stderr)["error"]
    assert run.returncode == code and error["exit_code"] == code, run
    assert name in error["message"] and "jetsource streams ensure" in error["hint"], error
