"""`jetsource archive compact | list | verify | export | restore` as an operator runs
them (a real nats-server, a one-second horizon on the real clock, settings from the
environment): compaction purges behind snapshots, verify passes and then fails on a
damaged segment (exit 1), restore writes a new stream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jetsource.core.settings import EventStoreSettings, SnapshotSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore
from tests.history_fixtures import append_history, save_snapshots
from tests.infra import Server

pytestmark = pytest.mark.integration


def environment(url: str, unique: str, archive: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    return env | {
        "JETSOURCE_NATS__URL": url,
        "JETSOURCE_EVENTSTORE__STREAM": f"AE_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"ae{unique}.events",
        "JETSOURCE_EVENTSTORE__RETENTION": "age+compaction",
        "JETSOURCE_EVENTSTORE__MAX_AGE_S": "1",
        "JETSOURCE_SNAPSHOTS__STREAM": f"AS_{unique}",
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": f"as{unique}.snapshots",
        "JETSOURCE_PROJECTOR__DLQ_STREAM": f"AD_{unique}",
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": f"ad{unique}",
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": f"AR_{unique}",
        "JETSOURCE_ARCHIVE__URL": str(archive),
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetsource", "archive", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(env: dict[str, str], *args: str) -> Any:
    run = cli(env, *args, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


async def stores(nc: Any, unique: str) -> tuple[JetStreamEventStore, JetStreamSnapshotStore]:
    """The event store (compacting, a one-second horizon) and the snapshot store that
    ``environment`` names, their streams made."""
    cfg = EventStoreSettings(
        stream=f"AE_{unique}",
        subject_prefix=f"ae{unique}.events",
        retention="age+compaction",
        max_age_s=1,
    )
    store = JetStreamEventStore(nc, registry, cfg)
    await store.ensure_streams()
    snapshots = JetStreamSnapshotStore(
        nc, SnapshotSettings(stream=f"AS_{unique}", subject_prefix=f"as{unique}.snapshots"), 5.0
    )
    await snapshots.ensure_stream()
    return store, snapshots


async def compactable(nc: Any, unique: str) -> tuple[JetStreamEventStore, JetStreamSnapshotStore]:
    """The ``stores``, story cli1 (25 events, a snapshot at 20) and story cli2 (5 events,
    no snapshot covers it: it stays), all past the one-second horizon."""
    store, snapshots = await stores(nc, unique)
    records = await append_history(store, "cli1", 25, seed=1)
    await save_snapshots(snapshots, records, [20])
    await append_history(store, "cli2", 5, seed=2)
    await asyncio.sleep(1.2)  # past the one-second horizon
    return store, snapshots


async def test_archive_commands(nats_server: Server, nc: Any, unique: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    env = environment(nats_server.url, unique, archive)
    store, snapshots = await compactable(nc, unique)

    # Progress on stderr as `archive export` shows it (compact was silent however long).
    run = cli(env | {"JETSOURCE_PROGRESS_EVERY_S": "0.01"}, "compact", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    seen = [json.loads(line)["progress"] for line in run.stderr.splitlines() if "progress" in line]
    assert seen and (seen[-1]["done"], seen[-1]["total"]) == (2, 2), run.stderr
    assert (report["archived"], report["purged"], report["aggregates"]) == (20, 20, 1)
    assert "cli2" in report["kept"]
    listed = ok(env, "list")
    assert len(listed) == 1 and listed[0]["aggregates"]["cli1"]["last_version"] == 20
    assert ok(env, "verify")["corrupt"] == {}
    # Another folder than the one compaction wrote to: the horizons name the segment it
    # purged on account of (verify said "0 segments verified", exit 0).
    elsewhere = cli(env | {"JETSOURCE_ARCHIVE__URL": str(tmp_path / "elsewhere")}, "verify")
    assert elsewhere.returncode == 1, elsewhere.stdout + elsewhere.stderr
    assert listed[0]["name"] in elsewhere.stdout and "JETSOURCE_ARCHIVE__URL" in elsewhere.stdout
    empty = cli(env | {"JETSOURCE_ARCHIVE__URL": str(tmp_path / "elsewhere")}, "list", "--json")
    assert empty.returncode == 1 and json.loads(empty.stdout) == [], empty.stdout + empty.stderr
    assert listed[0]["name"] in json.loads(empty.stderr)["error"]["missing"], empty.stderr
    # Segment files no manifest names: in the stream's folder, and outside every
    # stream's folder (these were passed over); named in the text output too.
    strays = [f"segments/AE_{unique}/stray.seg", "stray.seg", "segments/stray.seg"]
    for stray in strays:
        (archive / stray).write_bytes(b"not a segment")
    assert sorted(ok(env, "verify")["orphans"]) == sorted(strays)
    said = cli(env, "verify")
    assert said.returncode == 0 and all(s in said.stdout for s in strays), said.stdout
    for stray in strays:
        (archive / stray).unlink()
    exported = ok(env, "export")
    assert sum(e["count"] for e in exported) == 10  # versions 21..25 of cli1 and cli2's 5
    restored = ok(env, "restore", f"AR2_{unique}", "--subject-prefix", f"ae{unique}=ar{unique}")
    assert (restored["first_seq"], restored["last_seq"], restored["gaps"]) == (1, 30, 0)

    segment = archive / listed[0]["name"]
    blob = bytearray(segment.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    segment.write_bytes(bytes(blob))
    failed = cli(env, "verify")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "damaged" in failed.stdout

    await snapshots.close()
    await store.close()
