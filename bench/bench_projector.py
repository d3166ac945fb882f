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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
from pydantic import SecretStr
from tests.projector_fixtures import start_projector

from bench.common import (
    CPUS,
    Aim,
    CpuMeter,
    CpuReport,
    Table,
    exit_on_signals,
    ms,
    ratio,
    scratch_dir,
    show,
    stop,
)
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import GraphSettings, NatsSettings, ValkeySettings
from jetsource.devstack.servers import (
    ArcadeGraphServer,
    NatsServer,
    ValkeyServer,
    free_port,
)
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.settings import ProjectorOptions, ProjectorSettings


def pct(values: list[float], q: float) -> float:
    """The q-quantile of latencies in seconds, in milliseconds (nan when none)."""
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def seed(p: Projection, stories: list[str], events: int) -> None:
    sem = asyncio.Semaphore(64)

    async def write(story: str) -> None:
        async with sem:
            for i, m in enumerate(story_events(story, events)):
                await p.store.append(story, [NewEvent(m)], i)

    await asyncio.gather(*(write(s) for s in stories))


LOAD_WRITERS, LOAD_PER_WRITER = 8, 250.0
IDLE_PROBES = 200  # probes to the idle projector before the load starts (half each way)
MODELS = ("context", "timeline", "graph")
# timeline is the same code path as context (a Valkey model): quick mode skips it.
# 20 stories (400 events): the graph rebuild of 1,000 took 2-4 s of the smoke run.
QUICK = [
    "--stories",
    "20",
    "--events",
    "20",
    "--freshness-seconds",
    "2",
    "--models",
    "context,graph",
]


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


FRESHNESS_METRIC = "jetsource_projector_freshness_seconds"


async def freshness_buckets(port: str) -> dict[float, float]:
    """The projector's own freshness histogram (``le`` -> cumulative count, summed over
    its models) from its /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = (await asyncio.to_thread(httpx.get, url, timeout=5)).text
    out: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(FRESHNESS_METRIC + "_bucket{"):
            continue
        labels, _, value = line.rpartition(" ")
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        key = float("inf") if le == "+Inf" else float(le)
        out[key] = out.get(key, 0.0) + float(value)
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile in milliseconds: linear within the bucket."""
    bounds = sorted(buckets)
    if not bounds or not buckets[bounds[-1]]:
        return float("nan")
    rank = q * buckets[bounds[-1]]
    low, below = 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return low * 1000
            share = (rank - below) / (buckets[le] - below) if buckets[le] > below else 1.0
            return (low + (le - low) * share) * 1000
        low, below = le, buckets[le]
    return low * 1000


def histogram_cell(before: dict[float, float], after: dict[float, float]) -> str:
    """The projector's freshness histogram over a phase: quantiles and bucket shares."""
    diff = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = diff.get(float("inf"), 0.0)
    if not total:
        return "n/a"
    p50, p99 = histogram_quantile(diff, 0.5), histogram_quantile(diff, 0.99)
    shares = ", ".join(
        f"{100 * diff[le] / total:.0f}% ≤ {le * 1000:g} ms"
        for le in (0.005, 0.01, 0.025, 0.1)
        if le in diff
    )
    return f"{total:,.0f} events: p50 {ms(p50)}, p99 {ms(p99)} ({shares})"


@dataclass
class Probes:
    """One phase of probes: append to visible, and the append's own share (to its ack),
    each in seconds; the projector's histogram over the phase."""

    visible: list[float] = field(default_factory=list)
    acked: list[float] = field(default_factory=list)
    missed: int = 0
    histogram: str = "n/a"

    def cell(self) -> str:
        if not self.visible:
            return "nothing visible"
        return (
            f"p50 {ms(pct(self.visible, 0.5))}, p99 {ms(pct(self.visible, 0.99))} "
            f"(append acked: p50 {ms(pct(self.acked, 0.5))})"
        )


async def shell_version(model: ContextModel, story: str) -> int:
    """The story's version in its shell (the document without its nodes: one field,
    written by the same atomic script as the nodes, so the event is there too)."""
    [shell] = await model.read_shells([story])
    return int(shell["state"]["version"]) if shell else 0


async def document_version(model: ContextModel, story: str) -> int:
    """The story's version in its whole document, as a reader of the story gets it."""
    doc = await model.read(story)
    return int(doc["state"]["version"]) if doc else 0


POLLS = (shell_version, document_version)


async def probe_loop(
    p: Projection,
    model: ContextModel,
    story: str,
    seconds: float,
    count: int,
    outs: tuple[Probes, Probes],
) -> int:
    """Append to ``story`` every 10 ms (for ``seconds`` or ``count`` probes) and time
    until the context model has each event, polling the story's shell for every other
    probe (``outs[0]``) and reading its whole document for the rest (``outs[1]``);
    returns how many were appended."""
    history = story_events(story, count)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline and i < len(history):
        poll, out = POLLS[i % 2], outs[i % 2]
        started = time.perf_counter()
        await p.store.append(story, [NewEvent(history[i])], i)
        out.acked.append(time.perf_counter() - started)
        while time.perf_counter() - started < 5.0:
            if await poll(model, story) >= i + 1:
                out.visible.append(time.perf_counter() - started)
                break
            await asyncio.sleep(0.0005)
        else:
            out.missed += 1
        i += 1
        await asyncio.sleep(0.01)
    return i


async def freshness(
    p: Projection,
    env: dict[str, str],
    seconds: float,
    log: Path,
    pids: dict[str, int],
    max_nodes: int | None = None,
) -> tuple[tuple[Probes, Probes], tuple[Probes, Probes], float, CpuReport]:
    """Probes to an idle projector first (latency at low load), then appends to one
    probe story while 8 writers load others; time until Valkey has each."""
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
        loaded = 0

        # Histories made before the clock starts: making them costs CPU seconds.
        size = int(LOAD_PER_WRITER * seconds * 1.5) + 10
        histories = [
            story_events(f"load-{n}", size, max_nodes=max_nodes) for n in range(LOAD_WRITERS)
        ]

        async def load(n: int) -> None:
            """250 appends/s on a schedule (8 writers: 2,000/s), as far as they keep up."""
            nonlocal loaded
            story, history = f"load-{n}", histories[n]
            i = 0
            begin = time.perf_counter()
            while not stop.is_set() and i < len(history):
                await p.store.append(story, [NewEvent(history[i])], i)
                i += 1
                loaded += 1
                await asyncio.sleep(max(0.0, begin + i / LOAD_PER_WRITER - time.perf_counter()))

        idle = (Probes(), Probes())
        before = await freshness_buckets(port)
        await probe_loop(p, model, "idle-probe", 30.0, IDLE_PROBES, idle)
        middle = await freshness_buckets(port)
        idle[0].histogram = histogram_cell(before, middle)

        loaded_probes = (Probes(), Probes())
        load_started = time.perf_counter()
        meter = CpuMeter({**pids, "projector": proc.pid}).start()
        loaders = [asyncio.create_task(load(n)) for n in range(LOAD_WRITERS)]
        i = await probe_loop(
            p, model, "fresh-probe", seconds, int(seconds / 0.01) + 10, loaded_probes
        )
        stop.set()
        await asyncio.gather(*loaders)
        load_s = time.perf_counter() - load_started
        cpu = meter.stop(loaded + i)
        loaded_probes[0].histogram = histogram_cell(middle, await freshness_buckets(port))
        phases = [("idle", probes) for probes in idle]
        phases += [("loaded", probes) for probes in loaded_probes]
        for name, probes in phases:
            if probes.missed:
                print(f"freshness ({name}): {probes.missed} probes not visible within 5 s")
        return idle, loaded_probes, (loaded + i) / load_s, cpu
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


async def run(
    stories: int,
    events: int,
    fresh_s: float,
    models: tuple[str, ...] = MODELS,
    max_nodes: int | None = None,
) -> list[Table]:
    tmp = scratch_dir("jetsource-bench-projector-")
    servers = [
        NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port()),
        ValkeyServer(tmp / "valkey", port=free_port()),
        ArcadeGraphServer(
            tmp / "graph", http_port=free_port(), bolt_port=free_port(), password="bench-pass"
        ),
    ]
    procs = []
    try:
        for server in servers:
            proc = server.start()
            procs.append(proc)
            server.wait_ready(proc, 120)
        pids = dict(
            zip(("nats-server", "valkey-server", "arcadedb"), [p.pid for p in procs], strict=True)
        )
        nats_s, valkey_s, graph_s = servers
        assert isinstance(graph_s, ArcadeGraphServer)
        settings = ProjectorSettings(
            nats=NatsSettings(url=nats_s.address()),
            valkey=ValkeySettings(url=valkey_s.address()),
            graph=GraphSettings(
                uri=graph_s.address(),
                user="root",
                password=SecretStr("bench-pass"),
                database=graph_s.database,
            ),
            projector=ProjectorOptions(http_port=free_port(), models=["context"]),
        )
        p = await open_projection(settings)
        try:
            return await measure(
                p, settings, pids, stories, events, fresh_s, tmp, models, max_nodes
            )
        finally:
            await p.close()
    finally:
        for proc in reversed(procs):
            stop(proc)


async def measure(
    p: Projection,
    settings: ProjectorSettings,
    pids: dict[str, int],
    stories: int,
    events: int,
    fresh_s: float,
    tmp: Path,
    models: tuple[str, ...],
    max_nodes: int | None = None,
) -> list[Table]:
    total = stories * events
    print(
        f"{total:,} events ({stories:,} stories x {events}), cpus={CPUS}; "
        "nats-server, valkey-server, ArcadeDB and the benchmark share the machine"
    )
    t = time.perf_counter()
    await seed(p, [f"s{i:05d}" for i in range(stories)], events)
    print(f"seeded in {time.perf_counter() - t:.1f} s")
    meter = CpuMeter({"nats-server": pids["nats-server"]}).start()
    raw_rate, raw_s = await raw_delivery(settings.nats_url(), settings.eventstore.stream, total)
    raw_cpu = meter.stop(total)
    print(f"raw consumer (nats-py fetch 1000 + ack) {raw_rate:>10,.0f} msg/s ({raw_s:.1f} s)")
    rebuild = Table(
        f"Projector rebuilds: {total:,} events ({stories:,} stories x {events}) into each "
        "read model, beside nats-py's own pull consumer on the same stream",
        ["path", "events/s", "vs raw delivery", "CPU ms per event"],
    )
    rebuild.row(
        ["raw delivery (nats-py fetch 1,000, ack each)", f"{raw_rate:,.0f}", "1x", raw_cpu.cells()]
    )
    for name in models:
        # v1 is created live (and empty) with the control entry: build v2 beside it.
        meter = CpuMeter(pids, client="bench process (the rebuild)").start()
        report = await admin.rebuild(p, name, 2)
        cpu = meter.stop(report.applied)
        store = "ArcadeDB over Bolt" if name == "graph" else "Valkey"
        print(
            f"rebuild {name:<8} ({store}){report.rate:>14,.0f} ev/s ({report.seconds:.1f} s) = "
            f"{report.rate / raw_rate:.2f}x raw delivery"
        )
        rebuild.row(
            [
                f"rebuild `{name}` ({store})",
                f"{report.rate:,.0f}",
                ratio(report.rate / raw_rate),
                cpu.cells(),
            ]
        )
    rebuild.note("CPU: the bench process (the rebuild runs in it) + each server, over the row.")
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
    fresh_pids = {k: v for k, v in pids.items() if k != "arcadedb"}
    idles, loads, load, cpu = await freshness(
        p, env, fresh_s, tmp / "projector.log", fresh_pids, max_nodes
    )
    fresh = Table(
        "Freshness: append to visible in the Valkey context model, the projector in its own "
        f"process, idle, then under {LOAD_WRITERS} writers aiming at "
        f"{LOAD_WRITERS * LOAD_PER_WRITER:,.0f} appends/s"
        + (f" (load stories of at most {max_nodes} decisions and subtasks)" if max_nodes else ""),
        [
            "load",
            "probe sees it by",
            "probes",
            "append to visible (probe)",
            "max",
            "projector's histogram (recorded to applied)",
            "CPU ms per append",
        ],
    )
    how = ("polling the story's shell", "reading the whole story")
    idle = idles[0]
    if not idle.visible:
        print(f"freshness: nothing became visible; see {tmp / 'projector.log'}")
    for k, probes in enumerate(idles):
        if not probes.visible:
            continue
        print(
            f"freshness idle ({how[k]}), {len(probes.visible)} probes: {probes.cell()}; "
            f"projector histogram {idle.histogram}"
        )
        fresh.row(
            [
                "idle",
                how[k],
                str(len(probes.visible)),
                probes.cell(),
                ms(pct(probes.visible, 1.0)),
                idle.histogram if k == 0 else "(the same phase)",
                "",
            ]
        )
    if not loads[0].visible:
        fresh.row(
            [f"{load:,.0f} appends/s", how[0], "0", "nothing visible", "", "", cpu.cells()],
            [Aim("any", False)],
        )
        return [rebuild, fresh]
    for k, probes in enumerate(loads):
        lat = probes.visible
        if not lat:
            continue
        p50, p99, top = (pct(lat, q) for q in (0.5, 0.99, 1.0))
        print(
            f"freshness append->visible in Valkey ({how[k]}), {len(lat)} probes under "
            f"{load:,.0f} ev/s load: p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {top:.1f} ms "
            f"(append acked p50 {pct(probes.acked, 0.5):.1f} ms); "
            f"projector histogram {loads[0].histogram}"
        )
        aims = [
            Aim.at_most("p50 < 5 ms", p50, 5),
            Aim.at_most("p99 < 20 ms", p99, 20),
            Aim.at_least("at 2,000 appends/s of load (≥ 1,900 reached)", load, 1900),
        ]
        fresh.row(
            [
                f"{load:,.0f} appends/s",
                how[k],
                str(len(lat)),
                probes.cell(),
                ms(top),
                loads[0].histogram if k == 0 else "(the same phase)",
                cpu.cells() if k == 0 else "(the same phase)",
            ],
            aims if k == 0 else [],
        )
    fresh.note(
        "Probe: the bench appends to its own story every 10 ms and times until the context "
        "model shows the event, alternately polling the story's shell (the document "
        "without its nodes: one field, written by the same atomic script as the nodes; "
        "the aim's row) and reading the whole story as GetContext does (each poll then "
        "costs a read of the story, which grows by every probe: the reader's view); "
        "'append acked' is the append's share. The projector's histogram "
        "(jetsource_projector_freshness_seconds, every event it applied in the phase, "
        "quantiles interpolated in its buckets) runs from the event's recorded time to the "
        "model's write."
    )
    fresh.note(
        "CPU per append (probes and load): the bench process (writers and the probe's "
        "reads) + nats-server + valkey-server + the projector."
    )
    return [rebuild, fresh]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stories", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--freshness-seconds", type=float, default=15.0)
    parser.add_argument(
        "--models", default=",".join(MODELS), help="models to rebuild (context must be one)"
    )
    parser.add_argument(
        "--load-max-nodes",
        type=int,
        default=None,
        help="the load stories stop growing at this many decisions and subtasks (default: "
        "they grow all along, and so does the document the context model writes per batch)",
    )
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    if "context" not in models:
        parser.error("--models: context is needed (freshness reads it)")
    return show(
        asyncio.run(
            run(
                args.stories,
                args.events,
                args.freshness_seconds,
                models,
                args.load_max_nodes,
            )
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
