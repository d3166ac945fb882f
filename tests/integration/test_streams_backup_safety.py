"""`jetsource streams backup` / `restore` when things go wrong: a backup interrupted
(Ctrl-C), cut short by the disk or by NATS going away never damages the backup
already in its folder and says what happened (exit 130, 1, 3; NATS named, not
`--timeout`); a flipped bit in a backed-up payload is refused by its checksum before
anything is written (a backup without checksums still restores, with a note); a
restore beside its source without --subject-prefix names that option; with --json
every stderr line is JSON, notes as {"warning": ...}; usage errors name their field."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.cli_env import cli_env
from tests.cli_env import streams as cli
from tests.cli_env import streams_json as ok
from tests.infra import Server, second_nats
from tests.stream_reads import stream_names

pytestmark = pytest.mark.integration

MESSAGES = 3000  # enough progress lines (one per message) to fill a pipe no one reads


def environment(url: str, unique: str) -> dict[str, str]:
    """The CLI's environment with this test's streams, its keys bucket included."""
    return cli_env(url, unique, JETSOURCE_EVENTSTORE__KEYS_BUCKET=f"SK_{unique}")


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    yield from second_nats(tmp_path)


async def letters(url: str, unique: str, n: int) -> str:
    """A dead-letter stream of ``n`` messages (any stream jetsource owns will do)."""
    stream = f"DLQ_{unique}"
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"dlq{unique}.>"])
        for i in range(n):
            await nc.publish(f"dlq{unique}.context.v1.s{i % 7}", b"x" * 64 + str(i).encode())
        await nc.flush()
        for _ in range(100):
            if (await js.stream_info(stream)).state.messages == n:
                break
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    return stream


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def started(env: dict[str, str], folder: Path, *args: str) -> subprocess.Popen[str]:
    """A backup into ``folder`` running: returned once it reports its first message
    written. Its stderr (a progress line per message) is then left unread, so it stops
    where the pipe is full, midway."""
    run = subprocess.Popen(
        [sys.executable, "-m", "jetsource", "streams", "backup", str(folder), *args],
        env=env | {"JETSOURCE_PROGRESS_EVERY_S": "1e-9"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stderr is not None
    first = b""  # read byte by byte: communicate() later reads the descriptor, not a buffer
    while not first.endswith(b"\n"):
        byte = os.read(run.stderr.fileno(), 1)
        assert byte, first.decode() + run.communicate()[1]
        first += byte
    assert b"progress" in first or b"backup to" in first, first
    return run


def last_error(stderr: str) -> dict[str, Any]:
    lines = stderr.splitlines()
    for line in lines:  # every line JSON
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"not JSON: {line!r} in {stderr[-3000:]}")
    error: dict[str, Any] = json.loads(lines[-1])["error"]
    return error


async def test_an_interrupted_backup_leaves_the_backup_there_whole(
    fresh: Server, unique: str, tmp_path: Path
) -> None:
    """Ctrl-C during a backup into a folder holding one: exit 130, one JSON error
    saying nothing changed, the old backup byte for byte as it was (no temporary file
    left), and it still restores."""
    env = environment(fresh.url, unique)
    stream = await letters(fresh.url, unique, MESSAGES)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")
    before = snapshot(folder)

    run = started(env, folder, f"--stream={stream}", "--json")
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr[-2000:]
    error = last_error(stderr)
    assert error["code"] == "cancelled" and error["exit_code"] == 130
    assert f"nothing in {folder} changed" in error["message"], error
    assert snapshot(folder) == before

    plain = started(env, folder, f"--stream={stream}")
    plain.send_signal(signal.SIGINT)
    _, stderr = plain.communicate(timeout=60)
    assert plain.returncode == 130
    assert stderr.splitlines()[-1].startswith("cancelled: backup stopped"), stderr[-500:]
    assert snapshot(folder) == before


def limited(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``jetsource streams ARGS`` unable to write a file over 50 kB (EFBIG, where a
    full disk says ENOSPC: both an OSError midway through a file)."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    return subprocess.run(
        [sys.executable, "-m", "jetsource", "streams", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=small_files,
        check=False,
    )


async def test_a_backup_the_disk_refuses_names_the_file_and_changes_nothing(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    """A write refused midway (here: the file size limit, as a full disk would) is
    refused naming the file, the backup already there untouched, nothing partial
    left; a backup folder that is a file is a usage error saying so."""
    env = environment(nats_server.url, unique)
    stream = await letters(nats_server.url, unique, MESSAGES)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")
    before = snapshot(folder)

    run = limited(env, "backup", str(folder), "--json", f"--stream={stream}")
    assert run.returncode == 1, run.stderr
    error = last_error(run.stderr)
    assert str(folder / f"{stream}.jsonl") in error["message"], error
    assert "File too large" in error["message"], error
    assert snapshot(folder) == before

    onto = tmp_path / "a-file"
    onto.write_text("not a folder")
    refused = cli(env, "backup", str(onto), "--json")
    assert refused.returncode == 2, refused.stderr
    error = last_error(refused.stderr)
    assert error["field"] == "FOLDER" and "not a folder" in error["message"], error


async def test_nats_killed_during_a_backup_is_said_as_such(
    fresh: Server, unique: str, tmp_path: Path
) -> None:
    """NATS gone midway: exit 3 naming NATS and its URL within about the request
    timeout, not "not done within --timeout"."""
    env = environment(fresh.url, unique) | {"JETSOURCE_EVENTSTORE__REQUEST_TIMEOUT_S": "1"}
    stream = await letters(fresh.url, unique, MESSAGES)
    folder = tmp_path / "b"
    run = started(env, folder, f"--stream={stream}", "--json", "--timeout=600")
    assert fresh.proc is not None
    fresh.proc.kill()
    fresh.proc.wait(timeout=10)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 3, stderr[-2000:]
    error = last_error(stderr)
    assert error["code"] == "unavailable", error
    assert f"NATS at {fresh.url}" in error["message"] and "--timeout" not in error["message"]
    assert list(folder.iterdir()) == []  # nothing partial left


def flip(path: Path) -> None:
    """One character of one message's base64 payload changed: the line still reads."""
    rows = path.read_text().splitlines(keepends=True)
    row = json.loads(rows[2])
    row["data"] = ("B" if row["data"][0] != "B" else "C") + row["data"][1:]
    rows[2] = json.dumps(row, separators=(",", ":")) + "\n"
    path.write_text("".join(rows))


async def test_checksums_refuse_a_changed_file_and_old_backups_still_restore(
    nats_server: Server, fresh: Server, unique: str, tmp_path: Path
) -> None:
    env = environment(nats_server.url, unique)
    stream = await letters(nats_server.url, unique, 5)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")
    manifest = json.loads((folder / "manifest.json").read_text())
    digest = hashlib.sha256((folder / f"{stream}.jsonl").read_bytes()).hexdigest()
    assert manifest["streams"][0]["sha256"] == digest

    target = environment(fresh.url, unique)
    good = (folder / f"{stream}.jsonl").read_bytes()
    flip(folder / f"{stream}.jsonl")
    run = cli(target, "restore", str(folder), "--json")
    assert run.returncode == 1, run.stderr
    error = last_error(run.stderr)
    assert str(folder / f"{stream}.jsonl") in error["message"] and "sha256" in error["message"]
    nc = await nats.connect(fresh.url)
    try:
        assert [s for s in await nc.jetstream().streams_info() if s.config.name == stream] == []
    finally:
        await nc.close()

    # A backup made before manifests held checksums: restored, with a note (JSON).
    (folder / f"{stream}.jsonl").write_bytes(good)
    del manifest["streams"][0]["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    run = cli(target, "restore", str(folder), "--json")
    assert run.returncode == 0, run.stderr
    assert [r["messages"] for r in json.loads(run.stdout)] == [5]
    notes = [json.loads(line) for line in run.stderr.splitlines()]
    assert any("without checksums" in n.get("warning", "") for n in notes), run.stderr

    # Again: the note that it was restored already is a JSON warning line too.
    again = cli(target, "restore", str(folder), "--json")
    assert again.returncode == 0, again.stderr
    notes = [json.loads(line) for line in again.stderr.splitlines()]
    assert any("restored from this backup already" in n.get("warning", "") for n in notes)


async def test_a_restore_run_again_needs_no_file_of_a_stream_it_restored(
    nats_server: Server, fresh: Server, unique: str, tmp_path: Path
) -> None:
    """A stream restored from this backup already is left as it is and its file never
    read: run again after that file left the folder, the restore checked every file
    before connecting and refused "No such file" (exit 1). A file not there for a
    stream still to be written is refused naming it, nothing written."""
    env = environment(nats_server.url, unique)
    stream = await letters(nats_server.url, unique, 3)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")
    target = environment(fresh.url, unique)
    path = folder / f"{stream}.jsonl"
    kept = path.read_bytes()
    path.unlink()
    run = cli(target, "restore", str(folder), "--json")
    assert run.returncode == 1, run.stderr
    assert str(path) in last_error(run.stderr)["message"], run.stderr
    assert await stream_names(fresh.url) == set()

    path.write_bytes(kept)
    assert cli(target, "restore", str(folder)).returncode == 0
    path.unlink()  # restored: its file moved away
    again = cli(target, "restore", str(folder), "--json")
    assert again.returncode == 0, again.stderr
    assert [r["messages"] for r in json.loads(again.stdout)] == [3]
    notes = [json.loads(line) for line in again.stderr.splitlines()]
    assert any("restored from this backup already" in n.get("warning", "") for n in notes)


async def test_a_restore_beside_its_source_names_subject_prefix(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    env = environment(nats_server.url, unique)
    stream = await letters(nats_server.url, unique, 3)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")
    run = cli(env, "restore", str(folder), f"--rename={stream}=X{stream}", "--json")
    assert run.returncode == 1, run.stderr
    error = last_error(run.stderr)
    assert error["field"] == "--subject-prefix", error
    assert "--subject-prefix" in error["message"] and "JetStream error" not in error["message"]
    plain = cli(env, "restore", str(folder), f"--rename={stream}=X{stream}")
    assert "give --subject-prefix" in plain.stderr, plain.stderr


def test_usage_errors_name_their_field(tmp_path: Path) -> None:
    env = environment("nats://127.0.0.1:1", "u")
    run = cli(env, "restore", str(tmp_path), "--rename=nothing", "--json")
    assert run.returncode == 2, run.stderr
    assert last_error(run.stderr)["field"] == "--rename"
    run = cli(env, "restore", str(tmp_path), "--json")  # no manifest.json there
    assert run.returncode == 2, run.stderr
    assert last_error(run.stderr)["field"] == "FOLDER"
