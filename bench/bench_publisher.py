"""Publisher commands through gRPC beside pyeventsourcing on SQLite, same run, same workload.

Workload: AGGREGATES stories of HISTORY events each (1,000 by default); each command
loads its story and appends one DecisionAdded. Clients: 1 and 16, each on its own story.
  - jetsource (cached): the publisher as its own process, default settings (it keeps
    folded state and reads only what others appended; OCC catches a stale cache);
  - jetsource (no cache): the same with the state cache off, so every command folds the
    whole history from JetStream (the same work pyeventsourcing does);
  - pyeventsourcing 9 on SQLite (file): repository.get(id) then save(), 1 and 16 threads.
Prints commands/s and p50/p99 latency, and each jetsource row's ratio to the peer.

    python -m bench.bench_publisher [--history 1000] [--commands 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nats

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.client import ContextClient
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.devstack.servers import NatsServer, free_port, stop_pid
from jetsource.devstack.services import GrpcService
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore


class Stats:
    def __init__(self, name: str, latencies: list[float], seconds: float) -> None:
        self.name, self.latencies, self.seconds = name, sorted(latencies), seconds

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(q * len(self.latencies)))] * 1000

    def line(self, peer: Stats | None = None) -> str:
        ratio = f"  {self.rate / peer.rate:6.1f}x peer" if peer else ""
        return (
            f"{self.name:<34} {self.rate:>8,.0f} cmd/s  p50 {self.pct(0.5):7.2f} ms  "
            f"p99 {self.pct(0.99):7.2f} ms{ratio}"
        )


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


async def drive_jetsource(name: str, target: str, stories: list[str], commands: int) -> Stats:
    latencies: list[float] = []

    async def client(story: str) -> None:
        async with ContextClient(target, timeout=30) as c:
            for i in range(commands):
                t0 = time.perf_counter()
                await c.add_decision(story, f"bench-{i}", "benchmarked decision")
                latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client(s) for s in stories))
    return Stats(
        f"jetsource {name}, {len(stories)} client(s)", latencies, time.perf_counter() - started
    )


def peer_app(path: Path) -> tuple[Any, Any]:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Story(Aggregate):  # type: ignore[misc]
        @event("Created")  # type: ignore[untyped-decorator]
        def __init__(self, title: str) -> None:
            self.title = title
            self.decisions: dict[str, str] = {}

        @event("DecisionAdded")  # type: ignore[untyped-decorator]
        def add_decision(self, decision_id: str, title: str) -> None:
            if decision_id in self.decisions:
                raise ValueError(f"decision {decision_id} exists")
            self.decisions[decision_id] = title

    app = Application(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    )
    return app, Story


def drive_peer(app: Any, ids: list[Any], commands: int, tag: str) -> Stats:
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

    threads = [threading.Thread(target=client, args=(i,)) for i in ids]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Stats(
        f"pyeventsourcing sqlite, {len(ids)} client(s)", latencies, time.perf_counter() - started
    )


async def run(history: int, commands: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="jetsource-bench-pub-"))
    server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    proc = server.start()
    server.wait_ready(proc, 30)
    print(f"{history}-event stories; {commands} commands per client; cpus={os.cpu_count()}")
    publishers = []
    try:
        rows: dict[tuple[str, int], Stats] = {}
        for label, cache in (("cached", "10000"), ("no-cache", "0")):
            port = free_port()
            env = {
                "JETSOURCE_NATS__URL": server.address(),
                "JETSOURCE_PUBLISHER__GRPC_PORT": str(port),
                "JETSOURCE_PUBLISHER__METRICS_PORT": "0",
                "JETSOURCE_PUBLISHER__STATE_CACHE_SIZE": cache,
            }
            os.environ.update(env)
            service = GrpcService(
                f"publisher-{label}", "jetsource.publisher.server", tmp / label, "127.0.0.1", port
            )
            p = service.start()
            publishers.append(p)
            service.wait_ready(p, 60)
            for clients in (1, 16):
                stories = [f"{label}-{clients}-{i}" for i in range(clients)]
                await seed_jetsource(server.address(), stories, history)
                rows[(label, clients)] = await drive_jetsource(
                    label, service.address(), stories, commands
                )
        app, story_cls = peer_app(tmp / "peer.sqlite")
        for clients in (1, 16):
            ids = []
            for _ in range(clients):
                story = story_cls(title="peer")
                for i in range(history - 1):
                    story.add_decision(f"seed-{i}", "seeded decision")
                app.save(story)
                ids.append(story.id)
            peer_commands = max(10, commands // 4)
            rows[("peer", clients)] = drive_peer(app, ids, peer_commands, f"c{clients}")
        for clients in (1, 16):
            peer = rows[("peer", clients)]
            print(rows[("cached", clients)].line(peer))
            print(rows[("no-cache", clients)].line(peer))
            print(peer.line())
    finally:
        for p in publishers:
            stop_pid(p.pid)
        stop_pid(proc.pid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=200)
    args = parser.parse_args(argv)
    asyncio.run(run(args.history, args.commands))


if __name__ == "__main__":
    main()
