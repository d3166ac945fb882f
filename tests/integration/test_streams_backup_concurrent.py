"""Two `jetsource streams backup` into one folder at once: both wrote the same temporary
files, one's renames beside the other's; the first ended "No such file or directory ...
what FOLDER held before is unchanged" after the second had replaced it (or, the stream
grown between them, wrote its lines into the second's finished file). The second is now
refused at once naming the folder, touching nothing (not the first's temporary files
either); the first finishes its backup, whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.cli_env import streams as cli
from tests.cli_env import streams_json as ok
from tests.infra import Server
from tests.integration.test_streams_backup_safety import (
    MESSAGES,
    environment,
    last_error,
    letters,
    snapshot,
    started,
)

pytestmark = pytest.mark.integration


async def test_a_second_backup_into_the_same_folder_is_refused_while_one_runs(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    env = environment(nats_server.url, unique)
    stream = await letters(nats_server.url, unique, MESSAGES)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")
    before = snapshot(folder)

    first = started(env, folder, f"--stream={stream}", "--json")  # stalled midway
    try:
        second = cli(env, "backup", str(folder), f"--stream={stream}", "--json")
        during = snapshot(folder)
    finally:
        _, stderr = first.communicate(timeout=60)
    assert second.returncode == 1, second.stderr[-2000:]
    error = last_error(second.stderr)
    assert error["code"] == "refused", error
    assert str(folder) in error["message"] and "another" in error["message"], error
    assert {k: v for k, v in during.items() if not k.startswith(".partial-")} == before
    assert any(k.startswith(".partial-") for k in during)  # the first's, left alone

    assert first.returncode == 0, stderr[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["streams"]:
        data = (folder / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry
        assert data.count(b"\n") == entry["messages"] + 1
    ok(env, "backup", str(folder), f"--stream={stream}")  # one at a time: as before


async def test_the_temporary_files_of_a_killed_backup_go_with_the_next_one(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    """kill -9 during a backup leaves its `.partial-*` files (nothing runs to remove
    them); the next backup into the folder, of whichever streams, removes them."""
    env = environment(nats_server.url, unique)
    stream = await letters(nats_server.url, unique, MESSAGES)
    folder = tmp_path / "b"
    killed = started(env, folder, f"--stream={stream}", "--json")
    killed.kill()
    killed.communicate(timeout=30)
    assert any(p.name.startswith(".partial-") for p in folder.iterdir())
    (folder / ".partial-OTHER.jsonl").write_text("{}\n")  # of a stream not backed up now
    ok(env, "backup", str(folder), f"--stream={stream}")
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{stream}.jsonl", "manifest.json"])
