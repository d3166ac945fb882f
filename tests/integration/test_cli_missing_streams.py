"""Read commands against a NATS server that has none of their streams: each names the
missing stream and what creates it (`jetsource streams ensure`; omni's raw archive is the
ingest service's own), with the documented exit code (sessions and omni 3 unavailable, as
for NATS down; projector 1 refused, as its StreamMissingError), never INTERNAL.
`sessions list` and `prune` said 'INTERNAL: unexpected NoRespondersError: PROCESS_EVENTS
(a bug...)', `projector dlq show` the same for its dead-letter stream."""

from __future__ import annotations

import json

import pytest

from tests.cli_env import cli_env, jetsource
from tests.infra import Server

ENSURE = "jetsource streams ensure"
RAW_ID = "01890000-0000-7000-8000-000000000000"
CASES = [
    (("sessions", "list"), "SESS_{u}", 3, "UNAVAILABLE", ENSURE),
    (("sessions", "prune", "--dry-run"), "SESS_{u}", 3, "UNAVAILABLE", ENSURE),
    (("sessions", "show", "s1"), "SESS_{u}", 3, "UNAVAILABLE", ENSURE),
    (("sessions", "export", "s1"), "SESS_{u}", 3, "UNAVAILABLE", ENSURE),
    (("projector", "dlq", "show", "1"), "DLQ_{u}", 1, "refused", ENSURE),
    (("omni", "raw", "show", RAW_ID), "RAW_{u}", 3, "UNAVAILABLE", "ingest service"),
]


@pytest.mark.parametrize(("args", "stream", "code", "status", "hint"), CASES, ids=str)
def test_a_missing_stream_is_named_with_what_creates_it(
    nats_server: Server,
    unique: str,
    args: tuple[str, ...],
    stream: str,
    code: int,
    status: str,
    hint: str,
) -> None:
    env = cli_env(
        nats_server.url,
        unique,
        JETSOURCE_SESSIONS__STREAM=f"SESS_{unique}",
        JETSOURCE_SESSIONS__SUBJECT_PREFIX=f"sess{unique}.events",
        JETSOURCE_OMNI__RAW_STREAM=f"RAW_{unique}",
    )
    name = stream.format(u=unique)
    run = jetsource(env, *args)
    assert run.returncode == code, run
    assert run.stderr.startswith(f"{status}: "), run.stderr
    assert name in run.stderr and hint in run.stderr, run.stderr
    assert "INTERNAL" not in run.stderr

    run = jetsource(env, "-o", "json", *args)
    error = json.loads(run.stderr)["error"]
    assert run.returncode == code and error["exit_code"] == code, run
    assert name in error["message"] and hint in error["hint"], error
