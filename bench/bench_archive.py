"""Compaction and the archive (issue 19): how fast the archiver seals and purges, and
what a time-travel read before the horizon costs beside one after it.

Workload: AGGREGATES stories of EVENTS events each (the context domain's generated
histories, appended in 10-event commands), a snapshot of each at 80% of its history,
then one compaction with every event older than the horizon: each story's first 80%
is sealed into segments (zlib, SHA-256, read back and verified), its horizon recorded
and the events purged. Rows:
  - compaction: archived + purged events/s (one archiver, local directory archive);
  - export: the rest of the stream sealed without purging, events/s;
  - time travel by version before the horizon (archive) and after it (snapshot + live
    stream), through the query service's reader (ArchivedHistory + StateLoader): p50,
    p99 and the ratio; every answer checked against a full fold of the original.

    python -m bench.bench_archive [--aggregates N] [--events N] [--reads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import nats

from bench.common import Aim, Stats, Table, exit_on_signals, ratio, scratch_dir, show, stop
from jetsource.archive.archiver import Archiver
from jetsource.archive.history import ArchivedHistory
from jetsource.archive.objectstore import LocalObjectStore
from jetsource.archive.store import Archive
from jetsource.core.envelope import ANY, NewEvent, RecordedEvent
from jetsource.core.settings import EventStoreSettings, SnapshotSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.domains.context.events import registry
from jetsource.domains.context.history import Keys, StateLoader, add_keys, make_snapshot
from jetsource.domains.context.model import ContextState, fold
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.serialize import STATE_SCHEMA_VERSION
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore

QUICK = ["--aggregates", "40", "--events", "40", "--reads", "40"]
MAX_AGE_S = 3600.0
SEGMENT_EVENTS = 10_000


def state_at(records: list[RecordedEvent], version: int) -> ContextState:
    return fold([r.event for r in records[:version]], context_id=records[0].aggregate_id)


async def run(aggregates: int, events: int, reads: int) -> list[Table]:
    url = os.environ.get("JETSOURCE_BENCH_NATS_URL")
    tmp = scratch_dir("jetsource-bench-archive-")
    proc = None
    if not url:
        server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
        proc = server.start()
        server.wait_ready(proc, 30)
        url = server.address()
    nc = await nats.connect(url)
    try:
        tag = f"{os.getpid()}{random.randint(0, 9999)}"
        cfg = EventStoreSettings(
            stream=f"BARC_{tag}",
            subject_prefix=f"barc{tag}.events",
            retention="age+compaction",
            max_age_s=MAX_AGE_S,
        )
        store = JetStreamEventStore(nc, registry, cfg)
        await store.ensure_streams()
        snapshots = JetStreamSnapshotStore(
            nc, SnapshotSettings(stream=f"BARS_{tag}", subject_prefix=f"bars{tag}.snapshots"), 10
        )
        await snapshots.ensure_stream()
        ids = [f"story-{i:05d}" for i in range(aggregates)]
        covered = int(events * 0.8)

        async def write(cid: str) -> list[RecordedEvent]:
            history = story_events(cid, events, 7)
            for i in range(0, events, 10):
                await store.append(cid, [NewEvent(e) for e in history[i : i + 10]], ANY)
            records = await store.read_aggregate(cid)
            keys: Keys = {}
            add_keys(keys, records[:covered])
            await snapshots.save(
                make_snapshot(state_at(records, covered), records[covered - 1], keys)
            )
            return records

        originals: dict[str, list[RecordedEvent]] = {}
        for i in range(0, aggregates, 50):
            done = await asyncio.gather(*(write(c) for c in ids[i : i + 50]))
            originals.update(zip(ids[i : i + 50], done, strict=True))
        print(f"{aggregates:,} stories x {events} events written; snapshots at v{covered}")

        archive = Archive(LocalObjectStore(tmp / "archive"), cfg.stream)
        archiver = Archiver(store, snapshots, archive, STATE_SCHEMA_VERSION, SEGMENT_EVENTS)
        started = time.perf_counter()
        report = await archiver.compact(now=time.time_ns() + int(MAX_AGE_S * 1e9))
        compact_s = time.perf_counter() - started
        export_archive = Archive(LocalObjectStore(tmp / "export"), cfg.stream)
        started = time.perf_counter()
        exported = await Archiver(store, None, export_archive, None, SEGMENT_EVENTS).export()
        export_s = time.perf_counter() - started
        sealed_bytes = sum(e.size for e in await archive.entries())

        history = ArchivedHistory(store, archive)
        loader = StateLoader(history, snapshots, cache_size=1_000)
        rng = random.Random(3)
        rows: dict[str, list[float]] = {"before": [], "after": []}
        wrong = 0
        wall: dict[str, float] = {}
        for where, low, high in (("before", 1, covered - 1), ("after", covered + 1, events)):
            started = time.perf_counter()
            for _ in range(reads):
                cid, v = rng.choice(ids), rng.randint(low, high)
                t0 = time.perf_counter()
                point = await loader.load(cid, to_version=v)
                rows[where].append(time.perf_counter() - t0)
                if point.state != state_at(originals[cid], v):
                    wrong += 1
            wall[where] = time.perf_counter() - started
        before = Stats("before", rows["before"], wall["before"])
        after = Stats("after", rows["after"], wall["after"])

        table = Table(
            f"Archive: compaction and time travel across the horizon ({aggregates:,} stories "
            f"x {events} events, {SEGMENT_EVENTS:,} events per segment, local directory)",
            ["row", "figure", "detail"],
        )
        table.row(
            [
                "compaction (seal, verify, horizon, purge)",
                f"{report.purged / compact_s:,.0f} events/s",
                f"{report.purged:,} events of {report.aggregates:,} stories in {compact_s:.1f} s, "
                f"{len(report.segments)} segments, {sealed_bytes / max(1, report.archived):.0f} "
                "B/event sealed",
            ],
            [Aim("nothing purged that is not sealed", report.purged == report.archived)],
        )
        count = sum(e.count for e in exported)
        table.row(
            [
                "export (seal and verify, no purge)",
                f"{count / export_s:,.0f} events/s",
                f"{count:,} messages in {export_s:.1f} s",
            ]
        )
        table.row(
            [
                "time travel by version, before the horizon (archive)",
                before.latency(),
                f"{reads} reads of random stories (segments decoded once, then cached)",
            ],
            [Aim("equal to a full fold", wrong == 0)],
        )
        table.row(
            [
                "time travel by version, after the horizon (snapshot + live)",
                after.latency(),
                f"before/after: p50 {ratio(before.p50 / after.p50)}, "
                f"p99 {ratio(before.p99 / after.p99)}",
            ],
            [Aim("equal to a full fold", wrong == 0)],
        )
        table.note(
            "Issue 19 sets no number for these: a read before the horizon may be slower, "
            "never different (each answer above is compared with a full fold of the "
            "original history)."
        )
        return [table]
    finally:
        await nc.close()
        stop(proc)


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--aggregates", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args(argv)
    return show(asyncio.run(run(args.aggregates, args.events, args.reads)))


if __name__ == "__main__":
    main()
