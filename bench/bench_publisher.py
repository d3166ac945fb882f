"""Publisher commands through gRPC beside pyeventsourcing at its best, same run, same workload.

Workload: stories of HISTORY events each (1,000 by default); each command loads its story
and appends one DecisionAdded. Clients: 1 and 16, each on its own story.
  - jetsource (cached): the publisher as its own process, default settings (it keeps
    folded state and reads only what others appended; OCC catches a stale cache);
  - jetsource (2 workers): the same with publisher.workers=2, two processes sharing
    the port through SO_REUSEPORT (each client its own connection);
  - jetsource (no cache): the same with the state cache off, so every command folds the
    whole history from JetStream (through snapshots when the snapshotter wrote any;
    none here);
  - floors (bench/floor_server.py): stand-ins serving the same gRPC call through the
    same server set-up that do less than a command: answer at once; await one raw
    `js.publish` of a stored event's bytes; await one event store append. What the
    stack costs per call on this machine, so the publisher's own share is visible;
  - pyeventsourcing 9 on SQLite (file), repository.get(id) then save(), 1 and 16 threads,
    in three configurations (bench/peer.py): no snapshots (its default), snapshots every
    100 (its documented way for long histories), and snapshots + its aggregate cache.
Ratios are against the BEST peer row at the same number of clients. CPU per command:
the bench process (gRPC clients; for the peer, everything), the publisher and
nats-server (utime + stime from /proc/<pid>/stat before and after each row).

Commands per client (``--commands`` N, 200 by default): rows whose command costs
about a millisecond (ours with the cache, the floors, the peer with snapshots) send
10xN from 1 client and 2.5xN from each of 16, so each row runs for seconds and its
p50/p99 are of thousands of commands (N from 1 client was a quarter of a second:
the row's first moments weighed on its figures); the rows that fold the whole history
per command (ours without the cache: N and N/4; the peer without snapshots: N/4) take
tens of milliseconds per command.

    python -m bench.bench_publisher [--history 1000] [--commands 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import nats

from bench import peer
from bench.common import (
    CPUS,
    Aim,
    CpuMeter,
    Stats,
    Table,
    exit_on_signals,
    ratio,
    scratch_dir,
    show,
    stop,
)
from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.client import ContextClient
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.devstack.services import GrpcService
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore

ROOT = str(Path(__file__).resolve().parents[1])  # for bench.floor_server's PYTHONPATH
QUICK = ["--history", "100", "--commands", "20"]
CLIENTS = (1, 16)
SLOW = ("no-cache", "plain")  # the rows that fold the whole history per command


def per_client(label: str, clients: int, base: int) -> int:
    """Commands each client sends in the row (see the module's docstring)."""
    if label == "plain":
        return max(10, base // 4)
    if label in SLOW:
        return base if clients == 1 else max(10, base // 4)
    return base * 10 if clients == 1 else base * 5 // 2


OURS = {
    "cached": "jetsource publisher (default: cached fold)",
    "workers": "jetsource publisher, 2 workers on one port (publisher.workers=2)",
    "no-cache": "jetsource publisher, state cache off (full fold per command)",
}
FLOORS = {
    "grpc": "floor: gRPC service answering at once (same server set-up, no NATS)",
    "publish": "floor: gRPC service awaiting one raw js.publish per call",
    "append": "floor: gRPC service awaiting one event store append per call",
}


async def workers_up(supervisor: Any, metrics: int) -> list[int]:
    """The worker pids once each answers on its metrics port (bound after its gRPC
    port: a connection made before the second worker binds goes to the first)."""
    import urllib.request

    def ready() -> list[int]:
        children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
        pids = [int(x) for x in children.read_text().split()] if children.exists() else []
        try:
            for i in range(len(pids)):
                urllib.request.urlopen(f"http://127.0.0.1:{metrics + 100 * i}/metrics", timeout=2)
        except OSError:
            return []
        return pids

    for _ in range(600):
        pids = await asyncio.to_thread(ready)
        if len(pids) == 2:
            return pids
        await asyncio.sleep(0.1)
    raise RuntimeError("the publisher's two workers did not come up within 60 s")


async def seed_jetsource(url: str, stories: list[str], history: int) -> None:
    nc = await nats.connect(url)
    store = JetStreamEventStore(nc, registry, EventStoreSettings())
    await store.ensure_streams()
    for story in stories:
        version = 0
        events = [NewEvent(ev.ContextCreated(title=story))] + [
            NewEvent(ev.DecisionAdded(decision_id=f"seed-{i}", title="seeded decision"))
            for i in range(history - 1)
        ]
        for i in range(0, len(events), 500):
            chunk = events[i : i + 500]
            version = (await store.append(story, chunk, version)).last_version
    await store.close()
    await nc.close()


async def drive_jetsource(
    name: str, target: str, stories: list[str], commands: int, meter: CpuMeter
) -> Stats:
    latencies: list[float] = []
    clients = [ContextClient(target, timeout=30) for _ in stories]

    async def client(c: ContextClient, story: str) -> None:
        for i in range(commands):
            t0 = time.perf_counter()
            await c.add_decision(story, f"bench-{i}", "benchmarked decision")
            latencies.append(time.perf_counter() - t0)

    try:
        # Before the clock: each client's connection and its story's first command (a
        # cold load, the whole history folded), so the row measures the steady state.
        # The peer rows start warm too (drive_peer).
        await asyncio.gather(
            *(
                c.add_decision(s, "warm", "first command")
                for c, s in zip(clients, stories, strict=True)
            )
        )
        meter.start()
        started = time.perf_counter()
        await asyncio.gather(*(client(c, s) for c, s in zip(clients, stories, strict=True)))
        stats = Stats(name, latencies, time.perf_counter() - started)
        stats.cpu = meter.stop(len(latencies))
    finally:
        for c in clients:
            await c.close()
    return stats


def drive_peer(app: Any, ids: list[Any], commands: int, tag: str, name: str) -> Stats:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(story_id: Any) -> None:
        for i in range(commands):
            t0 = time.perf_counter()
            story = app.repository.get(story_id)
            story.add_decision(f"{tag}-{i}", "benchmarked decision")
            app.save(story)
            with lock:
                latencies.append(time.perf_counter() - t0)

    for story_id in ids:  # warm, as drive_jetsource does: one untimed command per story
        story = app.repository.get(story_id)
        story.add_decision(f"{tag}-warm", "first command")
        app.save(story)
    threads = [threading.Thread(target=client, args=(i,)) for i in ids]
    meter = CpuMeter(client="pyeventsourcing process").start()
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = Stats(name, latencies, time.perf_counter() - started)
    stats.cpu = meter.stop(len(latencies))
    return stats


async def drive_floor(
    tmp: Path, url: str, nats_pid: int, mode: str, commands: int
) -> dict[tuple[str, int], Stats]:
    """One floor service (bench/floor_server.py) at 1 and 16 clients."""
    port = free_port()
    env = {
        **os.environ,
        "FLOOR_MODE": mode,
        "FLOOR_PORT": str(port),
        "FLOOR_NATS": url,
        "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
    }
    service = GrpcService(
        f"floor-{mode}", "bench.floor_server", tmp / f"floor-{mode}", "127.0.0.1", port, env=env
    )
    p = service.start()
    out: dict[tuple[str, int], Stats] = {}
    try:
        service.wait_ready(p, 60)
        for clients in CLIENTS:
            stories = [f"floor-{mode}-{clients}-{i}" for i in range(clients)]
            meter = CpuMeter({"floor": p.pid, "nats-server": nats_pid})
            out[(mode, clients)] = await drive_jetsource(
                FLOORS[mode], service.address(), stories, per_client(mode, clients, commands), meter
            )
            print(out[(mode, clients)].line(), f"[{clients} client(s)]")
    finally:
        stop(p)
    return out


def table(rows: dict[tuple[str, int], Stats], history: int) -> Table:
    t = Table(
        f"Commands through the publisher: {history:,}-event stories, one DecisionAdded per "
        "command, each client on its own story",
        ["configuration", "clients", "cmd/s", "latency", "vs best peer", "CPU ms per command"],
        label_columns=2,
    )
    for clients in CLIENTS:
        peers = [rows[(c, clients)] for c in peer.CONFIGS if (c, clients) in rows]
        best = max(peers, key=lambda s: s.rate) if peers else None
        for label in OURS:
            s = rows[(label, clients)]
            aims: list[Aim] = []
            if label in ("cached", "workers") and clients == 16:
                aims = [
                    Aim.at_least("≥ 3,000 cmd/s", s.rate, 3000),
                    Aim.at_least("≥ 5x best peer", s.rate / best.rate if best else 0, 5),
                    Aim.at_most("p99 < 10 ms", s.p99, 10),
                ]
            elif label == "cached" and clients == 1:
                aims = [Aim.at_most("p50 < 1 ms", s.p50, 1)]
            t.row(_cells(s, clients, best), aims)
        for mode in FLOORS:
            if (mode, clients) in rows:
                t.row(_cells(rows[(mode, clients)], clients, best))
        for s in peers:
            name = s.name + (" (best peer)" if s is best else "")
            t.row(_cells(s, clients, None, name))
    for line in floor_notes(rows):
        t.note(line)
    counts = {(label, clients): s.count for (label, clients), s in rows.items() if s.count}
    if counts:
        t.note(
            "Commands timed per row (after one untimed command per story): "
            + "; ".join(
                f"{clients} client(s): "
                + ", ".join(f"{label} {n:,}" for (label, c), n in counts.items() if c == clients)
                for clients in CLIENTS
            )
            + "."
        )
    t.note(
        "CPU ms per command: the bench process (the gRPC clients; for pyeventsourcing "
        "everything, SQLite included) + the publisher + nats-server, from getrusage and "
        f"/proc/<pid>/stat over the row; 'cores busy' is that CPU over the row's wall "
        f"time, of {CPUS}. The CPU ceiling is cores / CPU per command."
    )
    return t


def floor_notes(rows: dict[tuple[str, int], Stats]) -> list[str]:
    """The publisher's CPU per command against the floors' at each number of clients:
    what the stack costs per call, and what is the command's own work."""
    out = []
    for clients in CLIENTS:
        ours, grpc_only = rows.get(("cached", clients)), rows.get(("grpc", clients))
        publish, append = rows.get(("publish", clients)), rows.get(("append", clients))
        if not (ours and grpc_only and publish and append):
            continue
        if not (ours.cpu and grpc_only.cpu and publish.cpu and append.cpu):
            continue
        total = _per_call_ms(ours)
        out.append(
            f"Floors at {clients} client(s), CPU ms per call (all processes): gRPC alone "
            f"{_per_call_ms(grpc_only):.2f}, with one js.publish {_per_call_ms(publish):.2f}, "
            f"with one event store append {_per_call_ms(append):.2f}; the publisher's "
            f"command {total:.2f}, {total - _per_call_ms(append):+.2f} over the floor with "
            "one append (the command's own work in the service: the cached story, decide, "
            "idempotency, fold, metrics, the answer). The floors with one publish and with "
            f"one append reach {publish.rate:,.0f} and {append.rate:,.0f} calls/s here "
            f"(CPU ceilings {publish.cpu.ceiling():,.0f} and {append.cpu.ceiling():,.0f}), "
            f"the publisher {ours.rate:,.0f} ({ours.rate / append.rate:.2f}x the append floor)."
        )
    return out


def _per_call_ms(s: Stats) -> float:
    cpu = s.cpu
    return cpu.total / max(1, cpu.operations) * 1000 if cpu else 0.0


def _cells(s: Stats, clients: int, best: Stats | None, name: str | None = None) -> list[str]:
    cpu = s.cpu.cells() if s.cpu else "n/a"
    ceiling = f" (CPU ceiling {s.cpu.ceiling():,.0f} cmd/s)" if s.cpu else ""
    return [
        name or s.name,
        str(clients),
        f"{s.rate:,.0f}",
        s.latency(),
        ratio(s.rate / best.rate) if best and best.rate else "",
        cpu + ceiling,
    ]


async def run(history: int, commands: int) -> list[Table]:
    tmp = scratch_dir("jetsource-bench-pub-")
    server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    proc = server.start()
    server.wait_ready(proc, 30)
    print(
        f"{history}-event stories; commands per client: {per_client('cached', 1, commands)} "
        f"(1 client), {per_client('cached', 16, commands)} (16 clients), whole-history rows "
        f"fewer; cpus={CPUS}"
    )
    publishers = []
    rows: dict[tuple[str, int], Stats] = {}
    try:
        for label, cache, workers in (
            ("cached", "10000", 1),
            ("workers", "10000", 2),
            ("no-cache", "0", 1),
        ):
            port = free_port()
            metrics = free_port() if workers > 1 else 0
            env = {
                **os.environ,
                "JETSOURCE_NATS__URL": server.address(),
                "JETSOURCE_PUBLISHER__GRPC_PORT": str(port),
                "JETSOURCE_PUBLISHER__METRICS_PORT": str(metrics),
                "JETSOURCE_PUBLISHER__STATE_CACHE_SIZE": cache,
                "JETSOURCE_PUBLISHER__WORKERS": str(workers),
            }
            service = GrpcService(
                f"publisher-{label}",
                "jetsource.publisher.server",
                tmp / label,
                "127.0.0.1",
                port,
                env=env,
            )
            p = service.start()
            publishers.append(p)
            service.wait_ready(p, 60)
            pids = {"publisher": p.pid}
            if workers > 1:
                pids = {f"worker {i}": pid for i, pid in enumerate(await workers_up(p, metrics))}
            for clients in CLIENTS:
                stories = [f"{label}-{clients}-{i}" for i in range(clients)]
                await seed_jetsource(server.address(), stories, history)
                meter = CpuMeter({**pids, "nats-server": proc.pid})
                rows[(label, clients)] = await drive_jetsource(
                    OURS[label],
                    service.address(),
                    stories,
                    per_client(label, clients, commands),
                    meter,
                )
                print(rows[(label, clients)].line(), f"[{clients} client(s)]")
            stop(p)
        for mode in FLOORS:
            rows.update(await drive_floor(tmp, server.address(), proc.pid, mode, commands))
        if not peer.available():
            print("pyeventsourcing not installed (pip install -e '.[bench]'): no peer rows")
        else:
            for config in peer.CONFIGS:
                app, story_cls = peer.make_app(tmp / f"peer-{config}.sqlite", config)
                for clients in CLIENTS:
                    ids = [peer.seed_story(app, story_cls, history) for _ in range(clients)]
                    n = per_client(config, clients, commands)
                    rows[(config, clients)] = drive_peer(
                        app, ids, n, f"c{clients}", peer.LABELS[config]
                    )
                    print(rows[(config, clients)].line(), f"[{clients} client(s)]")
                app.close()
    finally:
        for p in publishers:
            stop(p)
        stop(proc)
    return [table(rows, history)]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=200)
    args = parser.parse_args(argv)
    return show(asyncio.run(run(args.history, args.commands)))


if __name__ == "__main__":
    main()
