"""Query service reads over gRPC, beside pyeventsourcing's repository.get(id, version=).

  - GetContext from the Valkey context model: 16 concurrent clients over 100 stories;
  - time travel near the end of one 10,000-event story (a target among its last 100
    events, by time and by version): with snapshots (every 100, as the snapshotter
    writes them) and without (the same history under another id, no snapshots), both
    through the query service in its own process;
  - pyeventsourcing 9 on SQLite: repository.get(id, version=v) on a 10,000-event
    aggregate, same targets, no snapshots (its default), in the same run.
Prints reads/s and p50/p99 latency, and the ratios.

    python -m bench.bench_query [--history 10000] [--reads 300] [--max-nodes 200]
                                [--interleave K]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats

from bench.bench_publisher import Stats, peer_app
from jetsource.client import QueryClient
from jetsource.core.envelope import ANY, NewEvent
from jetsource.core.settings import EventStoreSettings, SnapshotSettings
from jetsource.devstack.servers import NatsServer, ValkeyServer, free_port, stop_pid
from jetsource.devstack.services import GrpcService
from jetsource.domains.context.events import registry
from jetsource.domains.context.history import add_keys, make_snapshot
from jetsource.domains.context.model import fold
from jetsource.domains.context.samples import story_events
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore


async def append(store: JetStreamEventStore, story: str, events: list[Any]) -> None:
    for i in range(0, len(events), 50):
        await store.append(story, [NewEvent(e) for e in events[i : i + 50]], ANY)


def other_writers() -> Iterator[tuple[str, list[Any]]]:
    """Commands of 10 events of other stories (200 events each), one after another."""
    for n in itertools.count():
        story = f"other-{n}"
        events = story_events(story, 200, seed=n)
        for i in range(0, len(events), 10):
            yield story, events[i : i + 10]


async def append_among(
    store: JetStreamEventStore, story: str, events: list[Any], others: int
) -> None:
    """The story in commands of 10 events, each followed by ``others`` commands of
    other stories: a stream shared with other writers."""
    writers = other_writers()
    for i in range(0, len(events), 10):
        await store.append(story, [NewEvent(e) for e in events[i : i + 10]], ANY)
        for _ in range(others):
            other, chunk = next(writers)
            await store.append(other, [NewEvent(e) for e in chunk], ANY)


async def seed(url: str, history: int, max_nodes: int | None, interleave: int) -> dict[str, Any]:
    """One long story with snapshots, its twin without, 100 short stories."""
    nc = await nats.connect(url)
    store = JetStreamEventStore(nc, registry, EventStoreSettings())
    await store.ensure_streams()
    snapshots = JetStreamSnapshotStore(nc, SnapshotSettings(), 5.0)
    await snapshots.ensure_stream()
    long = story_events("long", history, seed=7, max_nodes=max_nodes)
    if interleave:
        await append_among(store, "long", long, interleave)
    else:
        await append(store, "long", long)
    await append(store, "long-nosnap", long)
    records = await store.read_aggregate("long")
    twin = await store.read_aggregate("long-nosnap")
    keys: dict[str, tuple[int, int]] = {}
    add_keys(keys, records)
    state = fold([r.event for r in records[: history - 500]], context_id="long")
    for v in range(history - 499, history + 1):  # the newest five, like keep=5
        state = fold([records[v - 1].event], state)
        if v % 100 == 0:
            await snapshots.save(make_snapshot(state, records[v - 1], keys))
    short = [f"short-{i}" for i in range(100)]
    for s in short:
        await append(store, s, story_events(s, 100, seed=1))
    await snapshots.close()
    await store.close()
    await nc.close()
    return {"records": records, "twin": twin, "short": short, "state_bytes": len(str(state))}


async def project(url: str, valkey: str) -> None:
    """Fill the Valkey context model (the projector's work) in this process."""
    from jetsource.core.settings import NatsSettings, ValkeySettings
    from jetsource.projection.bootstrap import open_projection
    from jetsource.projection.runtime import Worker
    from jetsource.projection.settings import ProjectorOptions, ProjectorSettings

    s = ProjectorSettings(
        nats=NatsSettings(url=url),
        valkey=ValkeySettings(url=valkey),
        projector=ProjectorOptions(http_port=0),
    )
    p = await open_projection(s)
    await p.control.ensure("context", 1)
    worker = Worker(p.nc, p.store, p.model("context", 1), p.dead_letters, s.projector)
    await worker.run(until_caught_up=True)
    await p.close()


async def timed(name: str, calls: list[Any], clients: int) -> Stats:
    latencies: list[float] = []
    queue = list(calls)

    async def client() -> None:
        while queue:
            call = queue.pop()
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Stats(name, latencies, time.perf_counter() - started)


def drive_peer(history: int, targets: list[int], tmp: Path) -> Stats:
    app, story_cls = peer_app(tmp / "peer.sqlite")
    story = story_cls(title="peer")
    for i in range(history - 1):
        story.add_decision(f"seed-{i}", "seeded decision")
    app.save(story)
    latencies = []
    started = time.perf_counter()
    for v in targets:
        t0 = time.perf_counter()
        got = app.repository.get(story.id, version=v)
        latencies.append(time.perf_counter() - t0)
        assert got.version == v
    return Stats("pyeventsourcing get(version=)", latencies, time.perf_counter() - started)


async def run(history: int, reads: int, max_nodes: int | None, interleave: int = 0) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="jetsource-bench-query-"))
    nats_server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    valkey_server = ValkeyServer(tmp / "valkey", port=free_port())
    procs = []
    try:
        for server in (nats_server, valkey_server):
            proc = server.start()
            procs.append(proc)
            server.wait_ready(proc, 30)
        url = nats_server.address()
        valkey = f"redis://127.0.0.1:{valkey_server.port}/0"
        seeded = await seed(url, history, max_nodes, interleave)
        await project(url, valkey)
        port = free_port()
        os.environ.update(
            {
                "JETSOURCE_NATS__URL": url,
                "JETSOURCE_VALKEY__URL": valkey,
                "JETSOURCE_QUERY__GRPC_PORT": str(port),
                "JETSOURCE_QUERY__METRICS_PORT": "0",
            }
        )
        service = GrpcService("query", "jetsource.query.server", tmp / "query", "127.0.0.1", port)
        proc = service.start()
        procs.append(proc)
        service.wait_ready(proc, 60)
        records = seeded["records"]
        rng = random.Random(3)
        picks = [rng.randrange(history - 100, history) for _ in range(reads)]
        versions = [records[i].version for i in picks]
        times = [records[i].recorded_at_ns for i in picks]
        twin_times = [seeded["twin"][i].recorded_at_ns for i in picks]
        among = f", among {interleave}x as many events of others" if interleave else ""
        print(
            f"{history}-event story (state {seeded['state_bytes'] // 1000} kB as text{among}), "
            f"{reads} reads per row, targets among the last 100 events; cpus={os.cpu_count()}"
        )
        async with QueryClient(service.address(), timeout=60) as q:
            check = await q.at_version("long", history)
            assert check.snapshot_version == history, check.snapshot_version
            for warm in ("long", "long-nosnap"):
                await q.at_version(warm, history)
            short = seeded["short"]
            rows = {
                "get": await timed(
                    "GetContext, 16 clients",
                    [lambda s=rng.choice(short): q.get_context(s) for _ in range(reads * 10)],
                    16,
                ),
                "time_snap": await timed(
                    "AtTime, snapshots",
                    [lambda t=t: q.at_time("long", t) for t in times],
                    1,
                ),
                "version_snap": await timed(
                    "AtVersion, snapshots",
                    [lambda v=v: q.at_version("long", v) for v in versions],
                    1,
                ),
                "time_none": await timed(
                    "AtTime, no snapshots",
                    [lambda t=t: q.at_time("long-nosnap", t) for t in twin_times[: reads // 10]],
                    1,
                ),
                "version_none": await timed(
                    "AtVersion, no snapshots",
                    [lambda v=v: q.at_version("long-nosnap", v) for v in versions[: reads // 10]],
                    1,
                ),
            }
        peer = drive_peer(history, versions[: reads // 10], tmp)
        print(rows["get"].line().replace("cmd/s", "rd/s "))
        for kind in ("time", "version"):
            snap, none = rows[f"{kind}_snap"], rows[f"{kind}_none"]
            print(
                snap.line(peer).replace("cmd/s", "rd/s ")
                + f"  {none.pct(0.5) / snap.pct(0.5):5.1f}x faster than without (p50)"
            )
            print(none.line(peer).replace("cmd/s", "rd/s "))
        print(peer.line().replace("cmd/s", "rd/s "))
    finally:
        for proc in reversed(procs):
            stop_pid(proc.pid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument(
        "--max-nodes",
        type=int,
        default=None,
        help="a long-lived story: stop adding decisions/subtasks at this many, then only "
        "revise and progress them (default: keep growing, ~4,500 nodes at 10k events)",
    )
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="K",
        help="write the story with snapshots in commands of 10 events, each followed by K "
        "commands of other stories (default 0: its events are contiguous in the stream)",
    )
    args = parser.parse_args(argv)
    asyncio.run(run(args.history, args.reads, args.max_nodes, args.interleave))


if __name__ == "__main__":
    main()
