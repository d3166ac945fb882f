"""Chaos row for the archiver: two archivers compact the same stream at once and one
is killed with SIGKILL mid-run (as soon as it has sealed a few segments); a third
run then finishes the job. Invariant: no event is purged that is not in a verified
segment (a manifest entry whose segment reads back with its checksums), byte for
byte; every aggregate's history read across the horizon equals the original.

Run with `make chaos` (pytest -m chaos -s); prints one row."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jetsource.archive.history import ArchivedHistory
from jetsource.archive.objectstore import LocalObjectStore
from jetsource.archive.store import Archive
from jetsource.core.settings import EventStoreSettings, SnapshotSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore
from tests.history_fixtures import save_snapshots
from tests.infra import Server
from tests.projector_fixtures import seed, story_ids

pytestmark = pytest.mark.chaos

STORIES = 150
EVENTS = 30
COVERED = 25  # the snapshot each story has


def environment(url: str, unique: str, archive: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    return env | {
        "JETSOURCE_NATS__URL": url,
        "JETSOURCE_EVENTSTORE__STREAM": f"XE_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"xe{unique}.events",
        "JETSOURCE_EVENTSTORE__RETENTION": "age+compaction",
        "JETSOURCE_EVENTSTORE__MAX_AGE_S": "1",
        "JETSOURCE_SNAPSHOTS__STREAM": f"XS_{unique}",
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": f"xs{unique}.snapshots",
        "JETSOURCE_PROJECTOR__DLQ_STREAM": f"XD_{unique}",
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": f"xd{unique}",
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": f"XR_{unique}",
        "JETSOURCE_ARCHIVE__URL": str(archive),
        "JETSOURCE_ARCHIVE__SEGMENT_EVENTS": "120",  # many small segments: many kill points
    }


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jetsource", "archive", "compact", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def dump(store: JetStreamEventStore) -> dict[int, tuple[str, bytes]]:
    out: dict[int, tuple[str, bytes]] = {}
    seq = 1
    while True:
        page = await jsapi.direct_get_page(
            store._replies, store.settings.stream, None, seq, 1000, 5.0
        )
        out.update({m.seq: (m.subject, m.data) for m in page.messages})
        if page.pending == 0 or not page.messages:
            return out
        seq = page.messages[-1].seq + 1


async def test_archiver_killed_mid_run_beside_another_purges_nothing_unsealed(
    nats_server: Server, nc: Any, unique: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    folder = tmp_path / "archive"
    env = environment(nats_server.url, unique, folder)
    cfg = EventStoreSettings(
        stream=f"XE_{unique}",
        subject_prefix=f"xe{unique}.events",
        retention="age+compaction",
        max_age_s=1,
    )
    store = JetStreamEventStore(nc, registry, cfg)
    await store.ensure_streams()
    snapshots = JetStreamSnapshotStore(
        nc, SnapshotSettings(stream=f"XS_{unique}", subject_prefix=f"xs{unique}.snapshots"), 5.0
    )
    await snapshots.ensure_stream()
    stories = story_ids(STORIES, "x")
    await seed(store, stories, EVENTS, seed=9)
    originals = {s: await store.read_aggregate(s) for s in stories}
    for s in stories:
        await save_snapshots(snapshots, originals[s], [COVERED])
    before = await dump(store)
    await asyncio.sleep(1.2)

    segments_dir = folder / "segments" / f"XE_{unique}"
    victim, other = start(env), start(env)
    kill_after = random.randint(1, 4)  # sealed segments seen before the kill
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        sealed = len(list(segments_dir.glob("*.seg"))) if segments_dir.is_dir() else 0
        if sealed >= kill_after:
            break
        await asyncio.sleep(0.01)
    killed_mid_run = victim.poll() is None
    if killed_mid_run:
        victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    out, err = other.communicate(timeout=300)
    assert other.returncode == 0, out + err

    archive = Archive(LocalObjectStore(folder), f"XE_{unique}")

    async def check() -> tuple[int, int]:
        after = await dump(store)
        purged = set(before) - set(after)
        verdict = await Archive(LocalObjectStore(folder), f"XE_{unique}").verify()
        assert verdict.passed, verdict.corrupt
        sealed = {m.seq: (m.subject, m.data) for m in await archive.messages()}
        unsealed = [seq for seq in purged if sealed.get(seq) != before[seq]]
        assert not unsealed, f"purged without a verified segment: {sorted(unsealed)[:10]}"
        return len(purged), len(verdict.orphans)

    purged_mid, _ = await check()
    finisher = start(env)
    out, err = finisher.communicate(timeout=300)
    assert finisher.returncode == 0, out + err
    purged, orphans = await check()
    assert purged == STORIES * COVERED  # every covered, old event in the end

    history = ArchivedHistory(store, archive)
    for s in random.sample(stories, 20):
        again = await history.read_aggregate(s)
        assert [(r.stream_seq, r.envelope.SerializeToString()) for r in again] == [
            (r.stream_seq, r.envelope.SerializeToString()) for r in originals[s]
        ], s
    entries = await archive.entries()
    duplicates = sum(e.count for e in entries) - len({m.seq for m in await archive.messages()})
    print(
        f"\n| archiver kill -9 (after {kill_after} segments, mid-run: {killed_mid_run}) + "
        f"concurrent archiver | events {STORIES * EVENTS} | purged {purged_mid} then {purged} "
        f"| all purged in verified segments: yes | segments {len(entries)}, orphans {orphans}, "
        f"events sealed twice {duplicates} | {time.monotonic() - started:.1f} s |"
    )
    await snapshots.close()
    await store.close()
