"""Projector benchmark: rebuild rates into Valkey and the graph store beside the raw
consumer delivery rate of the same stream, and freshness under live load.

    python -m bench.bench_projector [--stories 1000] [--events 100]

Everything runs here on embedded servers (nats-server, Valkey, ArcadeDB with Bolt);
the projector for the freshness run is its own process, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import GraphSettings, NatsSettings, ValkeySettings
from jetsource.devstack.servers import (
    ArcadeGraphServer,
    NatsServer,
    ValkeyServer,
    free_port,
    stop_pid,
)
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.settings import ProjectorOptions, ProjectorSettings


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def seed(p: Projection, stories: list[str], events: int) -> None:
    sem = asyncio.Semaphore(64)

    async def write(story: str) -> None:
        async with sem:
            for i, m in enumerate(story_events(story, events)):
                await p.store.append(story, [NewEvent(m)], i)

    await asyncio.gather(*(write(s) for s in stories))


async def raw_delivery(url: str, stream: str, total: int) -> tuple[float, float]:
    """nats-py's own pull consumer: fetch 1,000 at a time, ack each, nothing else."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("", durable="bench-raw", stream=stream)
    got = 0
    started = time.perf_counter()
    while got < total:
        msgs = await sub.fetch(1000, timeout=5)
        for m in msgs:
            await m.ack()
        got += len(msgs)
    seconds = time.perf_counter() - started
    await nc.close()
    return got / seconds, seconds


def start_projector(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jetsource.projector.server"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def freshness(p: Projection, env: dict[str, str], seconds: float, log: Path) -> list[float]:
    """Append to one probe story while 8 writers load others; time until Valkey has it."""
    proc = start_projector(env, log)
    port = env["JETSOURCE_PROJECTOR__HTTP_PORT"]
    try:
        for _ in range(300):
            try:
                url = f"http://127.0.0.1:{port}/healthz"
                if (await asyncio.to_thread(httpx.get, url, timeout=1)).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        control = await p.control.get("context")
        model = p.model("context", control.active if control else 1)
        assert isinstance(model, ContextModel)
        stop = asyncio.Event()

        async def load(n: int) -> None:
            story = f"load-{n}"
            history = story_events(story, 5_000)
            i = 0
            while not stop.is_set() and i < len(history):
                await p.store.append(story, [NewEvent(history[i])], i)
                i += 1
                await asyncio.sleep(0.004)  # about 250 events/s per writer

        loaders = [asyncio.create_task(load(n)) for n in range(8)]
        probe = "fresh-probe"
        history = story_events(probe, 5_000)
        latencies: list[float] = []
        missed = 0
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline and i < len(history):
            started = time.perf_counter()
            await p.store.append(probe, [NewEvent(history[i])], i)
            while time.perf_counter() - started < 5.0:
                doc = await model.read(probe)
                if doc and doc["state"]["version"] >= i + 1:
                    latencies.append(time.perf_counter() - started)
                    break
                await asyncio.sleep(0.0005)
            else:
                missed += 1
            i += 1
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*loaders)
        if missed:
            print(f"freshness: {missed} probes not visible within 5 s")
        return latencies
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


async def run(stories: int, events: int, fresh_s: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="jetsource-bench-projector-"))
    servers = [
        NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port()),
        ValkeyServer(tmp / "valkey", port=free_port()),
        ArcadeGraphServer(
            tmp / "graph", http_port=free_port(), bolt_port=free_port(), password="bench-pass"
        ),
    ]
    procs = []
    for server in servers:
        proc = server.start()
        procs.append(proc)
        server.wait_ready(proc, 120)
    nats_s, valkey_s, graph_s = servers
    assert isinstance(graph_s, ArcadeGraphServer)
    settings = ProjectorSettings(
        nats=NatsSettings(url=nats_s.address()),
        valkey=ValkeySettings(url=valkey_s.address()),
        graph=GraphSettings(
            uri=graph_s.address(), user="root", password="bench-pass", database=graph_s.database
        ),
        projector=ProjectorOptions(http_port=free_port(), models=["context"]),
    )
    p = await open_projection(settings)
    try:
        total = stories * events
        print(
            f"{total:,} events ({stories:,} stories x {events}), os.cpu_count()={os.cpu_count()}; "
            "nats-server, valkey-server, ArcadeDB and the benchmark share the machine"
        )
        t = time.perf_counter()
        await seed(p, [f"s{i:05d}" for i in range(stories)], events)
        print(f"seeded in {time.perf_counter() - t:.1f} s")
        raw_rate, raw_s = await raw_delivery(nats_s.address(), settings.eventstore.stream, total)
        print(f"raw consumer (nats-py fetch 1000 + ack) {raw_rate:>10,.0f} msg/s ({raw_s:.1f} s)")
        for name in ("context", "timeline", "graph"):
            # v1 is created live (and empty) with the control entry: build v2 beside it.
            report = await admin.rebuild(p, name, 2)
            print(
                f"rebuild {name:<8} ({'graph' if name == 'graph' else 'valkey'})"
                f"{report.rate:>14,.0f} ev/s ({report.seconds:.1f} s) = "
                f"{report.rate / raw_rate:.2f}x raw delivery"
            )
        await admin.cutover(p, "context", 2, drop_old=True)
        s = settings
        env = {
            **os.environ,
            "JETSOURCE_NATS__URL": s.nats_url(),
            "JETSOURCE_VALKEY__URL": s.valkey_url(),
            "JETSOURCE_GRAPH__URI": s.graph_uri(),
            "JETSOURCE_GRAPH__USER": "root",
            "JETSOURCE_GRAPH__PASSWORD": "bench-pass",
            "JETSOURCE_GRAPH__DATABASE": s.graph.database,
            "JETSOURCE_PROJECTOR__HTTP_PORT": str(s.projector.http_port),
            "JETSOURCE_PROJECTOR__MODELS": json.dumps(["context"]),
            "JETSOURCE_LOG_LEVEL": "WARNING",
        }
        lat = await freshness(p, env, fresh_s, tmp / "projector.log")
        if not lat:
            print(f"freshness: nothing became visible; see {tmp / 'projector.log'}")
            return
        print(
            f"freshness append->visible in Valkey, {len(lat)} probes under ~2,000 ev/s load: "
            f"p50 {pct(lat, 0.5):.1f} ms  p99 {pct(lat, 0.99):.1f} ms  max {pct(lat, 1.0):.1f} ms"
        )
    finally:
        await p.close()
        for proc in procs:
            stop_pid(proc.pid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stories", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--freshness-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    asyncio.run(run(args.stories, args.events, args.freshness_seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
