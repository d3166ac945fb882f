"""`jetsource streams backup` / `restore` against a real nats-server: a stream with
gaps (compacted, a subject purged) comes back at its own sequences (voids, discards,
horizons and claims name them); a truncated or corrupt backup file is refused naming
the file and the line, with nothing restored; long work reports progress on stderr
while stdout holds the result alone."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from jetsource.core.envelope import NO_STREAM
from jetsource.core.settings import EventStoreSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.cli_env import streams as cli
from tests.cli_env import streams_json as ok
from tests.eventstore_fixtures import created, decision
from tests.infra import Server, second_nats
from tests.stream_reads import stored

pytestmark = pytest.mark.integration


def environment(url: str, unique: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    return env | {
        "JETSOURCE_NATS__URL": url,
        "JETSOURCE_EVENTSTORE__STREAM": f"FE_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"fe{unique}.events",
        "JETSOURCE_EVENTSTORE__RETENTION": "age+compaction",
        "JETSOURCE_EVENTSTORE__MAX_AGE_S": "86400",
        "JETSOURCE_SNAPSHOTS__STREAM": f"FS_{unique}",
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": f"fs{unique}.snapshots",
        "JETSOURCE_PROJECTOR__DLQ_STREAM": f"FD_{unique}",
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": f"fd{unique}",
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": f"FR_{unique}",
        "JETSOURCE_EVENTSTORE__KEYS_BUCKET": f"FK_{unique}",
    }


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    yield from second_nats(tmp_path)


async def compacted(env: dict[str, str], unique: str) -> None:
    """A compacting event stream with gaps as the archiver leaves them: a story's
    early events purged by subject (inside the stream) and the stream's first message
    gone (a leading gap); a dead letter naming a sequence after the gaps."""
    nc = await nats.connect(env["JETSOURCE_NATS__URL"])
    replies = jsapi.Replies(nc)
    await replies.start()
    try:
        store = JetStreamEventStore(
            nc,
            registry,
            EventStoreSettings(
                stream=f"FE_{unique}",
                subject_prefix=f"fe{unique}.events",
                retention="age+compaction",
                max_age_s=86400,
            ),
        )
        await store.start()
        await store.ensure_streams()
        await store.append("zero", [created("gone")], NO_STREAM)  # seq 1
        await store.append("first", [created("kept")], NO_STREAM)  # 2
        await store.append("story-1", [created("one"), decision(1, "a")], NO_STREAM)  # 3, 4
        await store.append("story-2", [created("two")], NO_STREAM)  # 5
        await store.append("story-1", [decision(2), decision(3)], 2)  # 6, 7
        await store.append("story-2", [decision(1)], 1)  # 8
        await store.close()
        stream = f"FE_{unique}"
        await jsapi.purge_subject_before(replies, stream, f"fe{unique}.events.zero.>", 2, 5)
        await jsapi.purge_subject_before(replies, stream, f"fe{unique}.events.story-1.>", 6, 5)
        js = nc.jetstream()
        await js.add_stream(name=f"FD_{unique}", subjects=[f"fd{unique}.>"])
        await js.publish(f"fd{unique}.context.v1.story-2", b"letter", headers={"A": "7"})
    finally:
        await replies.stop()
        await nc.close()


async def messages(url: str, stream: str) -> list[tuple[int, str, bytes]]:
    return [(m.seq, m.subject, m.data) for m in await stored(url, stream)]


async def info(url: str, stream: str) -> dict[str, Any] | None:
    nc = await nats.connect(url)
    replies = jsapi.Replies(nc)
    await replies.start()
    try:
        return await jsapi.api(replies, f"STREAM.INFO.{stream}", {}, 5)
    except jsapi.JsApiError as exc:
        if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
            return None
        raise
    finally:
        await replies.stop()
        await nc.close()


@pytest.mark.parametrize("ensured", [False, True], ids=["empty server", "after ensure"])
async def test_a_compacted_stream_comes_back_at_its_own_sequences(
    nats_server: Server, fresh: Server, unique: str, tmp_path: Path, ensured: bool
) -> None:
    """Voids, discarded dead letters, horizons and claims name stream sequences: a
    restore that renumbered a stream with gaps made them name other messages. Into
    an empty server, or one `streams ensure` provisioned first (empty streams)."""
    env = environment(nats_server.url, unique)
    await compacted(env, unique)
    stream = f"FE_{unique}"
    before = await messages(nats_server.url, stream)
    assert [seq for seq, _, _ in before] == [2, 5, 6, 7, 8]  # 1 (leading), 3-4 (inside)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")

    if ensured:
        ok(environment(fresh.url, unique), "ensure")
    restored = ok(environment(fresh.url, unique), "restore", str(folder))
    assert [(r["stream"], r["messages"], r["same_sequences"]) for r in restored] == [
        (stream, 5, True)
    ]
    assert await messages(fresh.url, stream) == before
    original, copy = await info(nats_server.url, stream), await info(fresh.url, stream)
    assert original is not None and copy is not None
    for key in ("subjects", "deny_delete", "deny_purge", "duplicate_window", "allow_atomic"):
        assert copy["config"][key] == original["config"][key], key
    assert copy["state"]["messages"] == 5 and copy["state"]["last_seq"] == 8
    # The event store appends after it as before.
    nc = await nats.connect(fresh.url)
    try:
        store = JetStreamEventStore(
            nc,
            registry,
            EventStoreSettings(
                stream=stream,
                subject_prefix=f"fe{unique}.events",
                retention="age+compaction",
                max_age_s=86400,
            ),
        )
        await store.start()
        appended = await store.append("story-2", [decision(2)], 2)
        assert appended.stream_seqs == [9]
        await store.close()
    finally:
        await nc.close()


def cut(folder: Path, stream: str, how: str) -> Path:
    """Break the backup in ``folder`` as ``how`` says; the file broken."""
    if how == "manifest":
        path = folder / "manifest.json"
        path.write_text(path.read_text()[:100])
        return path
    path = folder / f"{stream}.jsonl"
    rows = path.read_text().splitlines(keepends=True)
    if how == "not utf-8":
        path.write_bytes("".join(rows[:3]).encode() + b"\xff\xfe\n" + "".join(rows[4:]).encode())
    elif how == "mid-line":
        path.write_text("".join(rows[:-1]) + rows[-1][: len(rows[-1]) // 2])
    elif how == "last line":
        path.write_text("".join(rows[:-1]))
    else:  # a corrupt message in the middle
        row = json.loads(rows[2])
        row["data"] = "%%% not base64 %%%"
        path.write_text("".join([*rows[:2], json.dumps(row) + "\n", *rows[3:]]))
    return path


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("mid-line", "line 6: cut short"),
        ("last line", "4 messages, the manifest says 5"),
        ("corrupt", "line 3: not a backed-up message"),
        ("not utf-8", "line 4: not UTF-8"),
        ("manifest", "not a jetsource-streams-backup/1 manifest"),
    ],
)
async def test_a_truncated_or_corrupt_file_restores_nothing(
    nats_server: Server, fresh: Server, unique: str, tmp_path: Path, how: str, said: str
) -> None:
    """Refused before anything is written, naming the file and the line: no stream of
    the backup is created, the ones before the bad file included."""
    env = environment(nats_server.url, unique)
    await compacted(env, unique)
    folder = tmp_path / "b"
    backed = ok(env, "backup", str(folder), f"--stream=FD_{unique}", f"--stream=FE_{unique}")
    assert [r["stream"] for r in backed] == [f"FE_{unique}", f"FD_{unique}"]  # in this order
    bad = cut(folder, f"FE_{unique}", how)

    run = cli(environment(fresh.url, unique), "restore", str(folder), "--json")
    assert run.returncode == 1, run.stdout + run.stderr
    error = json.loads(run.stderr)["error"]
    assert (error["code"], error["exit_code"]) == ("refused", 1)
    assert str(bad) in error["message"] and said in error["message"], error["message"]
    assert run.stdout == ""
    for stream in (f"FE_{unique}", f"FD_{unique}"):
        assert await info(fresh.url, stream) is None, stream


async def test_long_work_reports_progress_on_stderr(
    nats_server: Server, fresh: Server, unique: str, tmp_path: Path
) -> None:
    """Piped (as a job's log sees it) a backup and a restore say how far they are on
    stderr; with --json the progress lines are JSON too and stdout holds one document."""
    env = environment(nats_server.url, unique) | {"JETSOURCE_PROGRESS_EVERY_S": "0.001"}
    await compacted(env, unique)
    folder = tmp_path / "b"
    only = [f"--stream=FE_{unique}", f"--stream=FD_{unique}"]

    plain = cli(env, "backup", str(folder), *only)
    assert plain.returncode == 0, plain.stderr
    assert f"backup to {folder}: 6/6 (100.0%)" in plain.stderr
    assert "progress" not in plain.stdout

    run = cli(
        environment(fresh.url, unique) | {"JETSOURCE_PROGRESS_EVERY_S": "0.001"},
        "restore",
        str(folder),
        "--json",
    )
    assert run.returncode == 0, run.stderr
    assert [r["messages"] for r in json.loads(run.stdout)] == [5, 1]
    reports = [json.loads(line)["progress"] for line in run.stderr.splitlines()]
    assert reports and all(r["what"] == f"restore from {folder}" for r in reports)
    assert (reports[-1]["done"], reports[-1]["total"]) == (6, 6)


async def test_a_restore_that_stopped_midway_goes_on_when_run_again(
    nats_server: Server, fresh: Server, unique: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A restore that died midway (here: after two messages, place-holders of a gap
    written) is finished by running it again: every message once, at its sequence,
    the place-holders gone, the stream's own deny flags set. Once whole, a third run
    leaves it be."""
    from jetsource.cli.streams import restore_streams
    from jetsource.projection.settings import ProjectorSettings

    env = environment(nats_server.url, unique)
    await compacted(env, unique)
    stream = f"FE_{unique}"
    before = await messages(nats_server.url, stream)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")

    target = environment(fresh.url, unique)
    for key, value in target.items():
        if key.startswith("JETSOURCE_"):
            monkeypatch.setenv(key, value)

    class Crash(Exception):
        pass

    def crash_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Crash

    with pytest.raises(Crash):
        await restore_streams(ProjectorSettings.load(), folder, {}, {}, None, crash_after_two)
    midway = await info(fresh.url, stream)
    assert midway is not None and midway["state"]["last_seq"] == 5  # 2, 3-4 held, 5

    run = cli(target, "restore", str(folder), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 messages restored before; going on from there" in run.stderr
    assert [(r["messages"], r["same_sequences"]) for r in json.loads(run.stdout)] == [(5, True)]
    assert await messages(fresh.url, stream) == before
    original, copy = await info(nats_server.url, stream), await info(fresh.url, stream)
    assert original is not None and copy is not None
    assert copy["state"]["messages"] == 5 and copy["state"]["last_seq"] == 8
    for key in ("deny_delete", "deny_purge", "duplicate_window"):
        assert copy["config"][key] == original["config"][key], key

    third = cli(target, "restore", str(folder))
    assert third.returncode == 0, third.stdout + third.stderr
    assert "restored from this backup already" in third.stderr
    assert await messages(fresh.url, stream) == before


async def test_a_backup_of_a_server_without_jetsource_streams_is_refused(
    fresh: Server, unique: str, tmp_path: Path
) -> None:
    """Pointed at the wrong server (no event stream of jetsource's), a backup is refused
    naming the streams it looked for, not an empty backup with exit 0; so is a
    `--stream` that does not exist."""
    env = environment(fresh.url, unique)
    folder = tmp_path / "b"
    for extra in ((), (f"--stream=FE_{unique}",)):
        folder.mkdir(exist_ok=True)
        run = cli(env, "backup", str(folder), *extra, "--json")
        assert run.returncode == 1, run.stdout + run.stderr
        error = json.loads(run.stderr.splitlines()[-1])["error"]
        assert (error["code"], error["exit_code"]) == ("refused", 1)
        assert f"FE_{unique}" in error["message"], error["message"]
        assert run.stdout == ""
        assert not (folder / "manifest.json").exists()
