"""Scale-out benchmark (#20): a rebuild of the Valkey context model with 1, 2 and 4
worker processes on the same stream, in one run (events/s, speed-up, the servers'
CPU); and failover: from kill -9 of the projector process owning a partition to the
next event of that partition visible in the read model (p50, max).

    python -m bench.bench_scaleout [--stories 3000] [--events 60] [--failovers 6]

3,000 stories (180,000 events; 1,000 before 2026-12-08): each rebuild runs for seconds
past its fixed costs (setting the version up, the consumers, starting the worker
processes). Measured first on 2026-12-08: the 1-worker rebuild gained more from it than
the 2-worker one (8,586 -> 11,962 events/s against 12,051 -> 15,335), so the speed-up
fell from 1.40x to 1.28x: start-up was not what held the 2-worker rebuild back; one
worker with nats-server and Valkey already keeps 1.7 of the 2 cores busy.

Everything runs here on embedded servers (nats-server, Valkey); the workers and the
projectors are processes of their own, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    CPUS,
    Aim,
    CpuMeter,
    Table,
    children_cpu_seconds,
    exit_on_signals,
    ratio,
    scratch_dir,
    show,
    stop,
)
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import NatsSettings, ValkeySettings
from jetsource.devstack.servers import NatsServer, ValkeyServer, free_port
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.projection import admin
from jetsource.projection import partitions_build as pb
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.partitions import Leases, PartitionOptions, partition_of
from jetsource.projection.settings import ProjectorOptions, ProjectorSettings

QUICK = ["--stories", "40", "--events", "10", "--workers", "1,2", "--failovers", "1"]
PARTITIONS = 4
TTL_S, RENEW_S = 2.0, 0.5


async def seed(p: Projection, stories: list[str], events: int) -> None:
    sem = asyncio.Semaphore(64)

    async def write(story: str) -> None:
        async with sem:
            for i, m in enumerate(story_events(story, events)):
                await p.store.append(story, [NewEvent(m)], i)

    await asyncio.gather(*(write(s) for s in stories))


async def rebuilds(
    p: Projection, pids: dict[str, int], total: int, workers: list[int]
) -> list[tuple[int, float, dict[str, float], float]]:
    """(workers, events/s, server CPU share of the wall time, seconds) per run."""
    out = []
    # The partition mirrors exist beforehand, as under a partitioned service (the first
    # build with a new count waits for the server to copy the stream: timed apart).
    for k in workers:
        if k > 1:
            started = time.perf_counter()
            await pb.ensure_partitions(p, "context", k)
            took = time.perf_counter() - started
            print(f"mirror of {total:,} events for {k} partitions: {took:.1f} s")
    for version, k in enumerate(workers, start=2):
        meter = CpuMeter(pids).start()
        reaped = children_cpu_seconds()
        report = await admin.rebuild(p, "context", version, workers=k)
        cpu = meter.stop(total)
        assert report.applied == total, (k, report.applied, total)
        # The builders: this process (the in-process build, or the parent's progress
        # polls) and the build workers it started and waited for (K > 1).
        builders = cpu.seconds.pop("client") + children_cpu_seconds() - reaped
        share = {"builders": builders / cpu.wall}
        share.update({n: s / cpu.wall for n, s in cpu.seconds.items()})
        out.append((k, total / report.seconds, share, report.seconds))
        print(f"rebuild with {k} worker(s): {total / report.seconds:,.0f} events/s")
    digests = {await p.model("context", v).digest() for v in range(2, 2 + len(workers))}
    assert len(digests) == 1, "parallel rebuilds differ from the single-worker one"
    for version in range(2, 2 + len(workers)):  # the failover run projects v1 only
        await admin.drop(p, "context", version, settle_s=0)
    return out


def env_for(settings: ProjectorSettings, member: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    return env | {
        "JETSOURCE_NATS__URL": settings.nats_url(),
        "JETSOURCE_VALKEY__URL": settings.valkey_url(),
        "JETSOURCE_PROJECTOR__HTTP_PORT": "0",
        "JETSOURCE_PROJECTOR__MODELS": '["context"]',
        "JETSOURCE_PROJECTOR__PARTITIONS__COUNT": str(PARTITIONS),
        "JETSOURCE_PROJECTOR__PARTITIONS__LEASE_TTL_S": str(TTL_S),
        "JETSOURCE_PROJECTOR__PARTITIONS__RENEW_EVERY_S": str(RENEW_S),
        "JETSOURCE_PROJECTOR__PARTITIONS__MEMBER": member,
    }


async def failovers(
    p: Projection, settings: ProjectorSettings, rounds: int, tmp: Path
) -> list[float]:
    """Two projectors share 4 partitions; each round kills -9 the owner of a probe
    story's partition, appends to it, and times until the read model shows it."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    serial = 0

    def start() -> None:
        nonlocal serial
        serial += 1
        member = f"m{serial}"
        with (tmp / f"{member}.log").open("ab") as log:
            procs[member] = subprocess.Popen(
                [sys.executable, "-m", "jetsource.projector.server"],
                env=env_for(settings, member),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    o = settings.projector.partitions.model_copy(update={"group": "projector"})
    leases = Leases(p.nc, o, "projector", "bench-observer")
    await leases.start()
    model = p.model("context", 1)
    assert isinstance(model, ContextModel)
    probe = "probe-story"
    part = partition_of(probe, PARTITIONS)
    history = story_events(probe, rounds + 2)
    times: list[float] = []
    try:
        start()
        start()
        await p.store.append(probe, [NewEvent(history[0])], 0)
        version = 1
        for _ in range(rounds):
            # Wait until two live members share the partitions and the probe is current.
            while True:
                _, holders = await leases.state()
                owner = holders.get(part, ("", 0, 0))[0]
                live = {m for m, proc in procs.items() if proc.poll() is None}
                doc = await model.read(probe)
                if (
                    owner in live
                    and len({h[0] for h in holders.values() if h[0]}) == 2
                    and doc
                    and doc["state"]["version"] >= version
                ):
                    break
                await asyncio.sleep(0.05)
            procs[owner].send_signal(signal.SIGKILL)
            procs[owner].wait()
            started = time.perf_counter()
            await p.store.append(probe, [NewEvent(history[version])], version)
            version += 1
            while True:
                doc = await model.read(probe)
                if doc and doc["state"]["version"] >= version:
                    break
                assert time.perf_counter() - started < 60, "failover took over 60 s"
                await asyncio.sleep(0.005)
            times.append(time.perf_counter() - started)
            print(f"failover {len(times)}: {times[-1]:.2f} s")
            start()  # back to two replicas
    finally:
        for proc in procs.values():
            stop(proc)
        await leases.stop()
    return times


async def run(stories: int, events: int, workers: list[int], rounds: int) -> list[Table]:
    tmp = scratch_dir("jetsource-bench-scaleout-")
    servers = [
        NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port()),
        ValkeyServer(tmp / "valkey", port=free_port()),
    ]
    procs = []
    try:
        for server in servers:
            proc = server.start()
            procs.append(proc)
            server.wait_ready(proc, 120)
        pids = dict(zip(("nats-server", "valkey-server"), [x.pid for x in procs], strict=True))
        nats_s, valkey_s = servers
        settings = ProjectorSettings(
            nats=NatsSettings(url=nats_s.address()),
            valkey=ValkeySettings(url=valkey_s.address()),
            projector=ProjectorOptions(
                http_port=0,
                models=["context"],
                partitions=PartitionOptions(
                    count=0, lease_ttl_s=TTL_S, renew_every_s=RENEW_S, group="projector"
                ),
            ),
        )
        p = await open_projection(settings)
        try:
            total = stories * events
            await seed(p, [f"s{i:05d}" for i in range(stories)], events)
            built = await rebuilds(p, pids, total, workers)
            times = await failovers(
                p,
                settings.model_copy(
                    update={
                        "projector": settings.projector.model_copy(
                            update={
                                "partitions": settings.projector.partitions.model_copy(
                                    update={"count": PARTITIONS}
                                )
                            }
                        )
                    }
                ),
                rounds,
                tmp,
            )
        finally:
            await p.close()
    finally:
        for proc in reversed(procs):
            stop(proc)
    return tables(total, stories, events, built, times)


def tables(
    total: int,
    stories: int,
    events: int,
    built: list[tuple[int, float, dict[str, float], float]],
    times: list[float],
) -> list[Table]:
    base = built[0][1]
    rebuild = Table(
        f"Parallel rebuild of the Valkey context model: {total:,} events ({stories:,} "
        f"stories x {events}), `projector rebuild --workers K`",
        ["workers", "events/s", "speed-up", "CPU (cores busy)", "seconds"],
    )
    for k, rate, share, seconds in built:
        cpu = ", ".join(f"{n} {v:.2f}" for n, v in share.items())
        cpu += f"; {sum(share.values()):.1f} of {CPUS}"
        aims = []
        if k == 2:
            # On 2 cores, 2 workers share them with nats-server and Valkey.
            aims = [Aim.at_least("#20: 2 workers >= 1.5x of 1 (2 cores)", rate / base, 1.5)]
        rebuild.row([str(k), f"{rate:,.0f}", ratio(rate / base), cpu, f"{seconds:.1f}"], aims)
    one = sum(built[0][2].values()) if built and built[0][0] == 1 else 0.0
    busy = (
        f" One worker already keeps {one:.1f} of the {CPUS} cores busy (itself and the "
        "servers it drives): what a second adds is what is left, and what the servers "
        "save per event on fuller batches."
        if one
        else ""
    )
    rebuild.note(
        f"{CPUS} CPUs shared by the workers, nats-server and Valkey: more workers than "
        "cores cannot add throughput; 1 worker is the in-process rebuild (no partitions); "
        "K > 1 includes starting K Python processes (their interpreter and imports) and "
        "reads the partition mirror, created before the run. Builders' CPU: this process "
        "and the build workers it started. Digests of every run are equal "
        f"(asserted).{busy}"
    )
    fail = Table(
        f"Failover: kill -9 of the projector owning a partition (of {PARTITIONS}, 2 "
        f"replicas, lease TTL {TTL_S:.0f} s, renewed every {RENEW_S} s) to the next event "
        "of that partition visible in the read model",
        ["failovers", "p50", "max"],
    )
    ordered = sorted(times)
    p50 = ordered[len(ordered) // 2] if ordered else float("nan")
    worst = ordered[-1] if ordered else float("nan")
    fail.row(
        [str(len(times)), f"{p50:.2f} s", f"{worst:.2f} s"],
        [
            Aim.at_most(
                f"max <= TTL + 2 renewals + 1 s ({TTL_S + 2 * RENEW_S + 1:.0f} s)",
                worst,
                TTL_S + 2 * RENEW_S + 1,
            )
        ],
    )
    return [rebuild, fail]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stories", type=int, default=3000)
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--failovers", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks it runs")
    args = parser.parse_args(QUICK if argv and "--quick" in argv else argv)
    workers = [int(w) for w in args.workers.split(",")]
    return show(asyncio.run(run(args.stories, args.events, workers, args.failovers)))


if __name__ == "__main__":
    main(sys.argv[1:])
