"""`jetsource streams ensure | backup | restore` and `jetsource archive list | verify`
with stdout redirected, as a script or a log collector runs them: plain output (the
default when stdout is not a terminal, or JETSOURCE_OUTPUT=plain, or -o plain) has no
box drawing and no wrapping, so a long stream name stays on one line; JSON (--json,
-o json, JETSOURCE_OUTPUT=json) is one document, as before. `streams ensure` waiting
for an absent NATS says so on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest

from jetsource.core.envelope import NO_STREAM
from jetsource.devstack.servers import free_port
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.cli_env import clean_environ, cli_env, event_store_settings
from tests.eventstore_fixtures import created, decision
from tests.infra import Server

pytestmark = pytest.mark.integration

# The console script installed beside this interpreter (the venv's `jetsource`).
JETSOURCE = str(Path(sys.executable).parent / "jetsource")
# Names longer than an 80-column table cell: Rich folded them across lines.
LONG = "CONTEXT_EVENTS_OF_A_RATHER_LONG_DEPLOYMENT_NAME"
PLAIN: tuple[dict[str, str], ...] = (
    {},
    {"JETSOURCE_OUTPUT": "plain"},
    {"JETSOURCE_OUTPUT": "table"},
)
PLAIN_ARGS = ((), (), ("-o", "plain"))  # the last one: -o wins over JETSOURCE_OUTPUT


def environment(url: str, unique: str, archive: Path) -> dict[str, str]:
    return cli_env(
        url,
        unique,
        JETSOURCE_EVENTSTORE__STREAM=f"{LONG}_{unique}",
        JETSOURCE_EVENTSTORE__SUBJECT_PREFIX=f"lo{unique}.events",
        JETSOURCE_SNAPSHOTS__STREAM=f"{LONG}_SNAPSHOTS_{unique}",
        JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX=f"lo{unique}.snapshots",
        JETSOURCE_PROJECTOR__DLQ_STREAM=f"{LONG}_DLQ_{unique}",
        JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX=f"lodlq{unique}",
        JETSOURCE_PROJECTOR__CONTROL_BUCKET=f"LR_{unique}",
        JETSOURCE_ARCHIVE__URL=str(archive),
    )


def run(
    env: dict[str, str], tmp_path: Path, *args: str, timeout: float = 120
) -> tuple[int, str, str]:
    """``jetsource ARGS > file``: stdout redirected to a file, stderr piped."""
    out = tmp_path / "stdout.txt"
    with out.open("w") as fh:
        done = subprocess.run(
            [JETSOURCE, *args],
            env=env,
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    return done.returncode, out.read_text(encoding="utf-8"), done.stderr


def plain_runs(env: dict[str, str], tmp_path: Path, *args: str, code: int = 0) -> list[str]:
    """The command's stdout in each plain mode: the redirect alone, JETSOURCE_OUTPUT=plain,
    -o plain over JETSOURCE_OUTPUT=table."""
    outs = []
    for extra_env, extra_args in zip(PLAIN, PLAIN_ARGS, strict=True):
        rc, out, err = run(env | extra_env, tmp_path, *extra_args, *args)
        assert rc == code, out + err
        outs.append(out)
    return outs


def json_runs(env: dict[str, str], tmp_path: Path, *args: str) -> list[Any]:
    """The command's JSON by --json, -o json and JETSOURCE_OUTPUT=json: the same document."""
    docs = []
    for extra_env, before, after in (
        ({}, (), ("--json",)),
        ({}, ("-o", "json"), ()),
        ({"JETSOURCE_OUTPUT": "json"}, (), ()),
    ):
        rc, out, err = run(env | extra_env, tmp_path, *before, *args, *after)
        assert rc == 0, out + err
        assert out.count("\n") == 1, out  # one JSON document on one line
        docs.append(json.loads(out))
    return docs


def assert_plain(out: str) -> None:
    boxes = sorted({c for c in out if "\u2500" <= c <= "\u257f"})
    assert not boxes, f"box drawing {boxes} in plain output:\n{out}"


def rows(out: str, columns: list[str]) -> list[dict[str, str]]:
    """A plain table: ``# title``, a tab-separated header, one tab-separated line a row."""
    lines = out.splitlines()
    assert lines[0].startswith("# "), out
    assert lines[1].split("\t") == columns, out
    got = []
    for line in lines[2:]:
        cells = line.split("\t")
        assert len(cells) == len(columns), f"{line!r} is not a row of {columns}:\n{out}"
        got.append(dict(zip(columns, cells, strict=True)))
    return got


async def fill(env: dict[str, str]) -> None:
    nc = await nats.connect(env["JETSOURCE_NATS__URL"])
    try:
        store = JetStreamEventStore(nc, registry, event_store_settings(env))
        await store.start()
        await store.append("story-1", [created("one"), decision(1, "body")], NO_STREAM)
        await store.append("story-2", [created("two")], NO_STREAM)
    finally:
        await nc.close()


async def test_streams_commands_print_plain_when_redirected(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    env = environment(nats_server.url, unique, tmp_path / "archive")
    events = env["JETSOURCE_EVENTSTORE__STREAM"]

    # ensure: every stream on one line, its whole name in the stream column.
    columns = ["role", "stream", "action", "subjects", "replicas", "messages"]
    for out in plain_runs(env, tmp_path, "streams", "ensure"):
        assert_plain(out)
        by_role = {r["role"]: r for r in rows(out, columns)}
        assert by_role["events"]["stream"] == events
        assert by_role["snapshots"]["stream"] == env["JETSOURCE_SNAPSHOTS__STREAM"]
        assert by_role["dead letters"]["stream"] == env["JETSOURCE_PROJECTOR__DLQ_STREAM"]
        assert by_role["events"]["subjects"] == f"lo{unique}.events.>, lo{unique}.voids.>"
    ensured = json_runs(env, tmp_path, "streams", "ensure")
    assert ensured[0] == ensured[1] == ensured[2]
    first = {r["role"]: r for r in ensured[0]}["events"]
    assert first == {
        "role": "events",
        "stream": events,
        "action": "unchanged",
        "subjects": [f"lo{unique}.events.>", f"lo{unique}.voids.>"],
        "replicas": 1,
        "messages": 0,
    }
    await fill(env)

    # backup
    folder = tmp_path / "backup"
    columns = ["role", "stream", "messages", "first seq", "last seq", "file"]
    for out in plain_runs(env, tmp_path, "streams", "backup", str(folder)):
        assert_plain(out)
        by_role = {r["role"]: r for r in rows(out, columns)}
        assert by_role["events"] == {
            "role": "events",
            "stream": events,
            "messages": "3",
            "first seq": "1",
            "last seq": "3",
            "file": f"{events}.jsonl",
        }
    backed = json_runs(env, tmp_path, "streams", "backup", str(folder))
    assert backed[0] == backed[1] == backed[2]
    assert {r["role"]: r for r in backed[0]}["events"] == {
        "role": "events",
        "stream": events,
        "file": f"{events}.jsonl",
        "messages": 3,
        "first_seq": 1,
        "last_seq": 3,
        "subjects": [f"lo{unique}.events.>", f"lo{unique}.voids.>"],
        "bucket": "",
        "horizons_of": "",
    }

    # restore, beside the old streams, each under a long new name
    columns = ["role", "from", "stream", "messages", "same sequences"]
    for i, (extra_env, extra_args) in enumerate(zip(PLAIN, PLAIN_ARGS, strict=True)):
        renames = restore_args(env, unique, f"P{i}")
        rc, out, err = run(
            env | extra_env, tmp_path, *extra_args, "streams", "restore", str(folder), *renames
        )
        assert rc == 0, out + err
        assert_plain(out)
        by_role = {r["role"]: r for r in rows(out, columns)}
        assert by_role["events"] == {
            "role": "events",
            "from": events,
            "stream": f"{events}_RESTORED_P{i}",
            "messages": "3",
            "same sequences": "yes",
        }
    rc, out, err = run(
        env, tmp_path, "streams", "restore", str(folder), *restore_args(env, unique, "J"), "--json"
    )
    assert rc == 0, out + err
    assert {r["role"]: r for r in json.loads(out)}["events"] == {
        "role": "events",
        "source": events,
        "stream": f"{events}_RESTORED_J",
        "messages": 3,
        "same_sequences": True,
    }


def restore_args(env: dict[str, str], unique: str, tag: str) -> list[str]:
    args = []
    for key in (
        "JETSOURCE_EVENTSTORE__STREAM",
        "JETSOURCE_SNAPSHOTS__STREAM",
        "JETSOURCE_PROJECTOR__DLQ_STREAM",
    ):
        # this test's streams only (a backup holds the shared ones too)
        args += ["--stream", env[key], "--rename", f"{env[key]}={env[key]}_RESTORED_{tag}"]
    for prefix in (f"lo{unique}", f"lodlq{unique}"):
        args += ["--subject-prefix", f"{prefix}={prefix}r{tag.lower()}"]
    return args


async def test_archive_list_and_verify_print_plain_when_redirected(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    # A deep archive folder: the list's title is longer than 80 columns.
    archive = tmp_path / "an-archive-folder-with-a-long-name" / ("x" * 60)
    env = environment(nats_server.url, unique, archive)
    rc, out, err = run(env, tmp_path, "streams", "ensure", "--json")
    assert rc == 0, out + err
    await fill(env)
    rc, out, err = run(env, tmp_path, "archive", "export", "--json")
    assert rc == 0, out + err
    sealed = json.loads(out)
    assert sum(e["count"] for e in sealed) == 3

    columns = ["segment", "events", "first seq", "last seq", "aggregates", "bytes"]
    for out in plain_runs(env, tmp_path, "archive", "list"):
        assert_plain(out)
        assert out.splitlines()[0] == f"# archive at {archive}", out
        listed = rows(out, columns)
        assert [(r["events"], r["first seq"], r["last seq"]) for r in listed] == [("3", "1", "3")]
        assert listed[0]["segment"] == sealed[0]["name"].rsplit("/", 1)[-1]
    docs = json_runs(env, tmp_path, "archive", "list")
    assert docs[0] == docs[1] == docs[2]
    assert list(docs[0][0]) == [
        "name",
        "stream",
        "count",
        "first_seq",
        "last_seq",
        "size",
        "sha256",
        "created",
        "aggregates",
    ]
    assert (docs[0][0]["name"], docs[0][0]["stream"]) == (
        sealed[0]["name"],
        env["JETSOURCE_EVENTSTORE__STREAM"],
    )

    summary = (
        "1 segment verified, 0 damaged, 0 without a manifest entry (left by an interrupted run)"
    )
    for out in plain_runs(env, tmp_path, "archive", "verify"):
        assert_plain(out)
        assert out == summary + "\n"
    docs = json_runs(env, tmp_path, "archive", "verify")
    assert docs[0] == docs[1] == docs[2]
    assert docs[0]["corrupt"] == {} and len(docs[0]["ok"]) == 1

    segment = archive / sealed[0]["name"]
    blob = bytearray(segment.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    segment.write_bytes(bytes(blob))
    for out in plain_runs(env, tmp_path, "archive", "verify", code=1):
        assert_plain(out)
        lines = out.splitlines()
        assert lines[0] == summary.replace("1 segment", "0 segments").replace(
            "0 damaged", "1 damaged"
        ), out
        assert len(lines) == 2 and lines[1].startswith(f"damaged {sealed[0]['name']}: "), out


def test_streams_ensure_says_it_waits_for_nats(tmp_path: Path) -> None:
    """The Helm hook's 120 s wait for NATS is not silent: a line on stderr at the first
    refusal and about every 10 s after (JETSOURCE_PROGRESS_EVERY_S, here 1 s); stdout
    stays empty; with --json every stderr line is JSON, the waiting notes too."""
    url = f"nats://127.0.0.1:{free_port()}"
    env = clean_environ() | {"JETSOURCE_NATS__URL": url, "JETSOURCE_PROGRESS_EVERY_S": "1"}
    rc, out, err = run(env, tmp_path, "streams", "ensure", "--timeout", "2.6", timeout=60)
    assert rc == 3, out + err
    assert out == ""
    waiting = [line for line in err.splitlines() if line.startswith("waiting for NATS")]
    assert len(waiting) >= 2, err
    assert waiting[0].startswith(f"waiting for NATS at {url} (0 s of 2.6 s"), err
    assert waiting[1].startswith(f"waiting for NATS at {url} (1 s of 2.6 s"), err
    assert "did not answer within 2.6 s" in err

    rc, out, err = run(env, tmp_path, "streams", "ensure", "--timeout", "1", "--json")
    assert rc == 3, out + err
    assert out == ""
    lines = [json.loads(line) for line in err.splitlines()]
    assert lines[0]["waiting"]["nats"] == url and lines[0]["waiting"]["waited_s"] == 0, err
    assert lines[-1]["error"]["exit_code"] == 3
