"""Sessions: emit-to-visible latency, from the session emitter's ``emit`` to the event
seen by a live follower (``jetsource sessions follow``'s reader), under background load.

Workload: one measured session emits probe events at RATE per second; meanwhile a
second session emits BACKGROUND events per second (the issue asks 200/s). Two rows:
  - through the observer (the production path: emitter -> RecordBatch over gRPC ->
    observer, its own process -> PROCESS_EVENTS -> the follower's ordered consumer);
  - straight to the stream (the emitter's LedgerWriter: the event store's append, no
    observer), to show what the observer hop costs.
The follower runs in the bench process, so emit and visible are read on one clock.

    python -m bench.bench_sessions [--probes N] [--rate N] [--background N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from typing import Any

import grpc

from bench.common import CPUS, Aim, CpuMeter, Stats, Table, exit_on_signals, scratch_dir, show, stop
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.core.settings import NatsSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.devstack.services import GrpcService
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.emit import Session
from jetsource.domains.sessions.ledger import ObserverWriter, SessionWriter
from jetsource.domains.sessions.settings import SessionsAppSettings, SessionsSettings


async def measure(
    name: str,
    writer: SessionWriter,
    client: Any,
    probes: int,
    rate: float,
    background: float,
    meter: CpuMeter,
) -> Stats:
    probe = Session(writer, "bench probe", validation="off", heartbeat_s=60)
    noise = Session(writer, "bench background", validation="off", heartbeat_s=60)
    await probe.__aenter__()
    await noise.__aenter__()
    emitted: dict[int, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def follower() -> None:
        async for r in client.sessions.follow(probe.id, until_end=False):
            if r.event.type == "bench_probe":
                latencies.append(time.perf_counter() - emitted[r.event.data["i"]])
                if len(latencies) == probes:
                    done.set()

    async def load() -> None:
        # background events in bursts every 10 ms, at the asked rate overall
        per_tick, n = max(1, round(background / 100)), 0
        start = time.perf_counter()
        while not done.is_set():
            for _ in range(per_tick):
                noise.emit("scan_progress", {"files_scanned": n})
                n += 1
            await asyncio.sleep(max(0.0, start + n / background - time.perf_counter()))

    following = asyncio.create_task(follower())
    await asyncio.sleep(0.3)  # the follower is live
    loading = asyncio.create_task(load())
    meter.start()
    t0 = time.perf_counter()
    for i in range(probes):
        emitted[i] = time.perf_counter()
        probe.emit("bench_probe", {"i": i})
        await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
    await asyncio.wait_for(done.wait(), 60)
    seconds = time.perf_counter() - t0
    loading.cancel()
    following.cancel()
    for task in (loading, following):
        with contextlib.suppress(BaseException):
            await task
    await probe.close()
    await noise.close()
    stats = Stats(name, latencies, seconds)
    stats.cpu = meter.stop(probes)
    return stats


async def run(probes: int, rate: float, background: float) -> Table:
    tmp = scratch_dir("jetsource-bench-sessions-")
    server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    nats_proc = server.start()
    server.wait_ready(nats_proc, 30)
    observer_proc = None
    try:
        port = free_port()
        env = {
            **os.environ,
            "JETSOURCE_NATS__URL": server.address(),
            "JETSOURCE_OBSERVER__GRPC_PORT": str(port),
            "JETSOURCE_OBSERVER__METRICS_PORT": "0",
            "JETSOURCE_LOG_LEVEL": "WARNING",
        }
        service = GrpcService(
            "observer", "jetsource.observer.server", tmp / "observer", "127.0.0.1", port, env=env
        )
        observer_proc = service.start()
        service.wait_ready(observer_proc, 60)
        pids = {"observer": observer_proc.pid, "nats-server": nats_proc.pid}
        settings = SessionsAppSettings(nats=NatsSettings(url=server.address()))
        print(f"{probes:,} probes at {rate:g}/s, background {background:g} events/s; cpus={CPUS}")
        rows = []
        channel = grpc.aio.insecure_channel(service.address())
        async with open_sessions(settings) as client, channel:
            writer = ObserverWriter(pb_grpc.ObserverServiceStub(channel))
            via = await measure(
                "emit -> observer -> follower", writer, client, probes, rate, background,
                CpuMeter(pids),
            )  # fmt: skip
            print(via.line(unit="ev/s"))
            rows.append(via)
        direct_settings = settings.model_copy(
            update={"sessions": SessionsSettings(stream="SESSIONS_DIRECT",
                                                 subject_prefix="sessdirect.events")}
        )  # fmt: skip
        async with open_sessions(direct_settings) as client:
            await client.store.ensure_streams()
            direct = await measure(
                "emit -> stream (no observer) -> follower", client.writer, client, probes, rate,
                background, CpuMeter({"nats-server": nats_proc.pid}),
            )  # fmt: skip
            print(direct.line(unit="ev/s"))
            rows.append(direct)
    finally:
        stop(observer_proc)
        stop(nats_proc)
    return table(rows, rate, background)


def table(rows: list[Stats], rate: float, background: float) -> Table:
    t = Table(
        f"Sessions: emit-to-visible latency (emit -> live follower), probes at {rate:g}/s "
        f"beside {background:g} background events/s",
        ["row", "probes", "p50", "p95", "p99", "CPU ms per probe"],
    )
    for s in rows:
        aims = [
            Aim.at_most("p50 < 10 ms", s.p50, 10.0),
            Aim.at_most("p95 < 30 ms", s.pct(0.95), 30.0),
            Aim.at_most("spec p50 < 150 ms", s.p50, 150.0),
            Aim.at_most("spec p95 < 500 ms", s.pct(0.95), 500.0),
        ]
        cpu = s.cpu.cells() if s.cpu else "n/a"
        t.row(
            [s.name, f"{s.count:,}", f"{s.p50:.2f} ms", f"{s.pct(0.95):.2f} ms",
             f"{s.p99:.2f} ms", cpu],
            aims,
        )  # fmt: skip
    t.note(
        "Emitter: jetsource.domains.sessions.emit.Session (emit queues, a background task "
        "records batches). Follower: the sessions reader's ordered JetStream consumer on "
        "the session's subjects, in the bench process (one clock). CPU covers the "
        "background load too."
    )
    t.note(f"nats-server with its default sync (2m); {CPUS} cores shared by everything.")
    return t


QUICK = ["--probes", "50", "--rate", "100", "--background", "200"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--probes", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--background", type=float, default=200.0)
    args = parser.parse_args(argv)
    return show([asyncio.run(run(args.probes, args.rate, args.background))])


if __name__ == "__main__":
    main()
