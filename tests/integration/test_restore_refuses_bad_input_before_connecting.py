"""`streams restore` and `streams backup`: what the command line and the folder alone
say is checked before NATS is tried. With NATS away (a closed port here) a bad manifest,
a --stream the backup does not hold (or, for a backup, one jetsource does not own), a
--rename that sends two streams onto one, or a folder another backup or restore is
using, was said only after the whole connect wait, as "NATS ... is not reachable". Now
each is refused at once, exit 1 and message as when it was found after connecting,
naming the file or the option. Not before connecting: a file the manifest names that is
not there (a stream restored from this backup already never reads its file, which only
the server says: tests/integration/test_streams_backup_safety.py), `archive restore
--retention age` without --max-age-s (run again onto the stream it restored, "restored
already": tests/integration/archive/test_restore_again.py)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_env import cli_env, jetsource

pytestmark = pytest.mark.integration

# Nothing listens there; the connect wait is long enough to tell a check made before
# connecting (about the CLI's start-up) from one made after it.
AWAY = cli_env("nats://127.0.0.1:9", "away", JETSOURCE_ADMIN_CONNECT_TIMEOUT_S="8")
FAST_S = 5.0


def backup_folder(tmp_path: Path, **manifest: Any) -> Path:
    """A backup folder: a dead-letter stream (one message) and a KV bucket, the
    manifest as a backup writes it, with ``manifest``'s keys instead."""
    folder = tmp_path / "backup"
    folder.mkdir()
    config = json.dumps({"role": "dead-letters", "config": {"name": "DLQ_a"}, "state": {}})
    line = json.dumps({"seq": 1, "subject": "dlq.a", "headers": {}, "data": ""})
    (folder / "DLQ_a.jsonl").write_text(f"{config}\n{line}\n")
    (folder / "KV_keys.jsonl").write_text(json.dumps({"config": {"name": "KV_keys"}}) + "\n")
    body = {
        "format": "jetsource-streams-backup/1",
        "created": "2026-01-01T00:00:00Z",
        "streams": [
            {"role": "dead-letters", "stream": "DLQ_a", "file": "DLQ_a.jsonl", "messages": 1},
            {
                "role": "keys",
                "stream": "KV_keys",
                "file": "KV_keys.jsonl",
                "messages": 0,
                "bucket": "keys",
            },
        ],
    } | manifest
    (folder / "manifest.json").write_text(json.dumps(body))
    return folder


def refused(*args: str) -> tuple[dict[str, Any], int]:
    """Run ``jetsource ARGS --json`` against the closed port: its error and exit code,
    which must come well within the connect wait."""
    started = time.monotonic()
    run = jetsource(AWAY, *args, "--json", timeout=60)
    took = time.monotonic() - started
    assert took < FAST_S, (took, run.stderr)
    assert "not reachable" not in run.stderr, run.stderr
    error: dict[str, Any] = json.loads(run.stderr.strip().splitlines()[-1])["error"]
    return error, run.returncode


def refused_while_held(folder: Path, *args: str) -> tuple[dict[str, Any], int]:
    """``refused(*args)`` while another backup or restore holds ``folder`` (its lock
    taken here)."""
    held = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return refused(*args)
    finally:
        os.close(held)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("garbage", "manifest.json"),
        ("format", "manifest.json"),
        ("entry", "manifest.json"),
        ("nul", "manifest.json"),
        ("decisions", "read-models.json"),
    ],
)
def test_streams_restore_refuses_a_bad_backup_before_connecting(
    tmp_path: Path, change: str, named: str
) -> None:
    changes: dict[str, dict[str, Any]] = {
        "format": {"format": "jetsource-streams-backup/9"},
        "entry": {"streams": [{"role": "x", "stream": "S"}]},
        # a decisions entry whose file does not read as one
        "decisions": {
            "read_models": {
                "role": "read models",
                "stream": "KV_rm",
                "file": "read-models.json",
                "messages": 0,
            }
        },
        # was an INTERNAL "unexpected ValueError: embedded null byte"
        "nul": {
            "streams": [
                {"role": "dead-letters", "stream": "DLQ_a", "file": "DLQ_a\0.jsonl", "messages": 0}
            ]
        },
    }
    folder = backup_folder(tmp_path, **changes.get(change, {}))
    (folder / "read-models.json").write_text("[]")
    if change == "garbage":
        (folder / "manifest.json").write_text("{not json")
    error, code = refused("streams", "restore", str(folder))
    assert code == 1, error
    assert error["code"] == "refused" and named in error["message"], error


@pytest.mark.parametrize(
    ("options", "field", "said"),
    [
        (("--stream", "NOPE"), "--stream", "not in this backup"),
        (("--rename", "DLQ_a=KV_keys"), "--rename", "both go to KV_keys"),
        (("--rename", "KV_keys=plain"), "--rename", "KV bucket keys"),
    ],
)
def test_streams_restore_refuses_bad_options_before_connecting(
    tmp_path: Path, options: tuple[str, ...], field: str, said: str
) -> None:
    error, code = refused("streams", "restore", str(backup_folder(tmp_path)), *options)
    assert code == 1, error
    assert error["field"] == field and said in error["message"], error


def test_streams_restore_refuses_a_folder_in_use_before_connecting(tmp_path: Path) -> None:
    """Another backup or restore holding the folder (its lock taken here)."""
    folder = backup_folder(tmp_path)
    error, code = refused_while_held(folder, "streams", "restore", str(folder))
    assert code == 1, error
    assert "is using this folder" in error["message"] and str(folder) in error["message"], error


def test_streams_backup_refuses_a_stream_it_does_not_own_before_connecting(
    tmp_path: Path,
) -> None:
    error, code = refused("streams", "backup", str(tmp_path / "new"), "--stream", "NOPE")
    assert code == 1, error
    assert error["field"] == "--stream" and "not a stream jetsource owns" in error["message"]
    assert "CE_away" in error["message"], error  # the streams it does own are named


def test_streams_backup_refuses_a_folder_in_use_before_connecting(tmp_path: Path) -> None:
    error, code = refused_while_held(tmp_path, "streams", "backup", str(tmp_path))
    assert code == 1, error
    assert "is using this folder" in error["message"] and str(tmp_path) in error["message"]
