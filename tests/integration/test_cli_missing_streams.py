"""Commands against a NATS server that has none of their streams: each names the
missing stream (or bucket) and what creates it (`jetsource streams ensure`; omni's raw
archive and identity handles are the ingest service's own), with one exit code in
every group: 1, refused (a missing stream is fixed by creating it, not by retrying;
README "Exit codes": NOT_FOUND / FAILED_PRECONDITION are 1), never INTERNAL.

Before: `sessions list` and `prune` said 'INTERNAL: unexpected NoRespondersError:
PROCESS_EVENTS (a bug...)', `projector dlq show` the same for its dead-letter stream;
then sessions and omni exited 3 (as for NATS down) and projector 1; `projector status`
exited 3 with no error line, `projector dlq list` / `retry` said "0 dead letters"
(exit 0), `projector drop` / `wait` / `reset` 'refused: JetStream error 404/10059:
stream not found' (no name), `archive export` 'INTERNAL: unexpected
NoRespondersError', `archive compact` that the stream "keeps its events (forever)",
`erase` "key already gone, 0 events scanned" (exit 0), and `omni identity resolve`
NOT_FOUND "no identity has the handle" after creating the handles bucket."""

from __future__ import annotations

import json
from pathlib import Path

import nats
import pytest

from tests.cli_env import cli_env, jetsource
from tests.infra import Server
from tests.stream_reads import stream_names

ENSURE = "jetsource streams ensure"
INGEST = "ingest service"
RAW_ID = "01890000-0000-7000-8000-000000000000"
IDENTITY = "idn-01890000-0000-7000-8000-000000000001"
REFUSED, PRECONDITION = "refused", "FAILED_PRECONDITION"
CASES = [
    (("sessions", "list"), "SESS_{u}", PRECONDITION, ENSURE),
    (("sessions", "prune", "--dry-run"), "SESS_{u}", PRECONDITION, ENSURE),
    # a real prune said PERMISSION_DENIED "refused the purge (stream not found)"
    (("sessions", "prune"), "SESS_{u}", PRECONDITION, ENSURE),
    (("sessions", "show", "s1"), "SESS_{u}", PRECONDITION, ENSURE),
    (("sessions", "export", "s1"), "SESS_{u}", PRECONDITION, ENSURE),
    (("sessions", "follow", "s1"), "SESS_{u}", PRECONDITION, ENSURE),
    (("projector", "status"), "CE_{u}", REFUSED, ENSURE),
    (("projector", "dlq", "list"), "DLQ_{u}", REFUSED, ENSURE),
    (("projector", "dlq", "show", "1"), "DLQ_{u}", REFUSED, ENSURE),
    (("projector", "dlq", "retry"), "DLQ_{u}", REFUSED, ENSURE),
    (("projector", "dlq", "discard", "--seq", "1", "--yes"), "DLQ_{u}", REFUSED, ENSURE),
    (("projector", "replay", "context", "--from-seq", "1"), "CE_{u}", REFUSED, ENSURE),
    (("projector", "drop", "context", "--version", "2"), "CE_{u}", REFUSED, ENSURE),
    (
        ("projector", "wait", "context", "--version", "1", "--timeout", "1"),
        "CE_{u}",
        REFUSED,
        ENSURE,
    ),
    (("archive", "export"), "CE_{u}", REFUSED, ENSURE),
    (("archive", "compact"), "CE_{u}", REFUSED, ENSURE),
    (("repair", "void", "--seq", "1", "--reason", "x", "--yes"), "CE_{u}", REFUSED, ENSURE),
    (("erase", "alice", "--yes"), "CE_{u}", REFUSED, ENSURE),
    (("omni", "raw", "show", RAW_ID), "RAW_{u}", PRECONDITION, INGEST),
    (("omni", "identity", "create", "--name", "x"), "OE_{u}", PRECONDITION, ENSURE),
    (("omni", "identity", "resolve", "whatsapp", "123"), "OH_{u}", PRECONDITION, INGEST),
    (("omni", "identity", "handles", IDENTITY), "OH_{u}", PRECONDITION, INGEST),
]


def _env(nats_url: str, unique: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(
        nats_url,
        unique,
        JETSOURCE_SESSIONS__STREAM=f"SESS_{unique}",
        JETSOURCE_SESSIONS__SUBJECT_PREFIX=f"sess{unique}.events",
        JETSOURCE_OMNI__RAW_STREAM=f"RAW_{unique}",
        JETSOURCE_OMNI__RAW_SUBJECT_PREFIX=f"raw{unique}",
        JETSOURCE_OMNI__EVENTS_STREAM=f"OE_{unique}",
        JETSOURCE_OMNI__EVENTS_SUBJECT_PREFIX=f"oe{unique}.events",
        JETSOURCE_OMNI__IDENTITY_BUCKET=f"OH_{unique}",
        JETSOURCE_ARCHIVE__URL=str(tmp_path / "archive"),
        JETSOURCE_ADMIN_CONNECT_TIMEOUT_S="10",
    )


@pytest.mark.parametrize(("args", "stream", "status", "hint"), CASES, ids=str)
async def test_a_missing_stream_is_named_with_what_creates_it_exit_1(
    nats_server: Server,
    unique: str,
    tmp_path: Path,
    args: tuple[str, ...],
    stream: str,
    status: str,
    hint: str,
) -> None:
    env = _env(nats_server.url, unique, tmp_path)
    name = stream.format(u=unique)
    run = jetsource(env, *args)
    assert run.returncode == 1, run
    assert run.stderr.startswith(f"{status}: "), run.stderr
    assert name in run.stderr and hint in run.stderr, run.stderr
    assert "not exist" in run.stderr.splitlines()[0], run.stderr
    assert "INTERNAL" not in run.stderr and "Traceback" not in run.stderr

    run = jetsource(env, "-o", "json", *args)
    error = json.loads(run.stderr.splitlines()[-1])["error"]
    assert run.returncode == 1 and error["exit_code"] == 1, run
    assert error["code"] == status, error
    assert name in error["message"] and hint in error["hint"], error
    assert name in error["missing"], error

    # Nothing was made on the way (the handles bucket was, by a read of it).
    assert not {s for s in await stream_names(nats_server.url) if unique in s}


async def test_an_unknown_handle_in_an_existing_bucket_is_still_not_found(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    """With the bucket there, an unknown handle is what it was: NOT_FOUND, exit 1."""
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().create_key_value(bucket=f"OH_{unique}")
    finally:
        await nc.close()
    env = _env(nats_server.url, unique, tmp_path)
    run = jetsource(env, "omni", "identity", "resolve", "whatsapp", "123")
    assert run.returncode == 1, run
    assert run.stderr.startswith("NOT_FOUND: no identity has the handle whatsapp:123"), run


async def test_status_names_a_missing_dead_letter_stream_beside_the_others(
    nats_server: Server, valkey_server: Server, unique: str, tmp_path: Path
) -> None:
    """The event streams there, the dead letters' gone: `projector status` prints its
    report and names that one (a model's row said only 'JsApiError: JetStream error
    404/10059: stream not found', exit 0)."""
    env = _env(nats_server.url, unique, tmp_path) | {"JETSOURCE_VALKEY__URL": valkey_server.url}
    ensured = jetsource(env, "streams", "ensure", timeout=120)
    assert ensured.returncode == 0, ensured
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().delete_stream(f"DLQ_{unique}")
    finally:
        await nc.close()

    run = jetsource(env, "-o", "json", "projector", "status")
    assert run.returncode == 1, run
    assert json.loads(run.stdout), run.stdout  # the report, as before
    error = json.loads(run.stderr.splitlines()[-1])["error"]
    assert error["missing"] == [f"DLQ_{unique}"] and ENSURE in error["hint"], error
