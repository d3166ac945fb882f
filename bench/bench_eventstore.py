"""Event store appends (OCC + dedupe) beside raw nats-py `js.publish`, same run, same server.

Workload: AGGREGATES aggregates, EVENTS events of a typical size, sent by CONCURRENCY
writers that each own a share of the aggregates (a partitioned publisher: no conflicts).
  - single: one event per command -> one publish with the OCC and Msg-Id headers;
  - batch10: ten events per command -> one atomic batch;
  - raw: `js.publish` of the same subjects and payloads, no headers, awaited one by one
    per writer (the plain client's way), into a stream with the same configuration.
The store's rows get the events as message objects made before the clock starts (as
the raw row gets its payload); each command's envelope, event id (UUIDv7), encoding,
sealing and headers are timed.
Prints events/s, command latency p50/p90/p99, the ratio to raw, and stored bytes per
event (stream state, and on disk after s2 compression).

    python -m bench.bench_eventstore [--events N] [--aggregates N] [--concurrency N]
    JETSOURCE_BENCH_NATS_URL=nats://... to use an external server (disk size then unknown)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats

from bench.common import (
    CPUS,
    Aim,
    CpuMeter,
    CpuReport,
    Table,
    exit_on_signals,
    ms,
    ratio,
    raw_stream,
    scratch_dir,
    show,
    stop,
)
from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore


def typical_event(n: int) -> ev.DecisionAdded:
    return ev.DecisionAdded(
        decision_id=f"d-{n:05d}",
        title="Use JetStream atomic batches for commands",
        body="Several events of one command are stored together or not at all.",
        author="agent-7",
    )


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    latencies_ms: list[float]
    cpu: CpuReport | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self, raw: Result | None = None) -> str:
        ratio = f"  {self.rate / raw.rate:5.2f}x raw" if raw else ""
        return (
            f"{self.name:<22} {self.rate:>9,.0f} ev/s  p50 {self.pct(0.5):6.2f} ms  "
            f"p90 {self.pct(0.9):6.2f} ms  p99 {self.pct(0.99):6.2f} ms{ratio}"
        )


async def drive(
    name: str,
    commands_per_writer: list[list[Callable[[], Awaitable[None]]]],
    events_per_command: int,
    meter: CpuMeter,
) -> Result:
    latencies: list[float] = []

    async def writer(commands: list[Callable[[], Awaitable[None]]]) -> None:
        for command in commands:
            t0 = time.perf_counter()
            await command()
            latencies.append((time.perf_counter() - t0) * 1000)

    meter.start()
    started = time.perf_counter()
    await asyncio.gather(*(writer(c) for c in commands_per_writer))
    elapsed = time.perf_counter() - started
    total = sum(len(c) for c in commands_per_writer) * events_per_command
    return Result(name, total, elapsed, latencies, meter.stop(total))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass
class Pass:
    """One server's rows: raw, store single-event, raw x10, store 10-event."""

    sync: str | None
    raw: Result
    single: Result
    raw10: Result
    batch: Result
    stored: list[str]


async def run(events: int, aggregates: int, concurrency: int, sync: str | None) -> Pass:
    url = os.environ.get("JETSOURCE_BENCH_NATS_URL")
    tmp = scratch_dir("jetsource-bench-")
    proc = None
    if not url:
        server = NatsServer(
            tmp / "nats", port=free_port(), monitor_port=free_port(), sync_interval=sync
        )
        proc = server.start()
        server.wait_ready(proc, 30)
        url = server.address()
    nc = await nats.connect(url)
    js = nc.jetstream()
    pids = {"nats-server": proc.pid} if proc is not None else {}

    def meter() -> CpuMeter:
        return CpuMeter(pids)

    try:
        version = nc._server_info["version"]
        print(
            f"server nats-server {version} sync_interval={sync or 'default (2m)'}; "
            f"{events:,} events, {aggregates:,} aggregates, {concurrency} writers, "
            f"os.cpu_count()={os.cpu_count()}"
        )
        ids = [f"story-{i:04d}" for i in range(aggregates)]
        per_writer = [ids[w::concurrency] for w in range(concurrency)]

        def store_for(tag: str) -> JetStreamEventStore:
            cfg = EventStoreSettings(stream=f"BENCH_{tag}", subject_prefix=f"bench{tag}.events")
            return JetStreamEventStore(nc, registry, cfg)

        # -- raw client, same payload bytes and subjects ---------------------------------
        probe = store_for("probe")
        first = [NewEvent(typical_event(0))]
        sample = probe._messages("story-0000", first, probe._encode("story-0000", first), 0, 0)[0]
        await js.add_stream(raw_stream("BENCH_RAW", "benchraw.>"))
        payload = sample.data

        def raw_commands(n_events: int) -> list[list[Callable[[], Awaitable[None]]]]:
            out: list[list[Callable[[], Awaitable[None]]]] = []
            for mine in per_writer:
                cmds: list[Callable[[], Awaitable[None]]] = []
                for i in range(n_events // concurrency):
                    subject = f"benchraw.{mine[i % len(mine)]}.DecisionAdded"

                    async def publish(subject: str = subject) -> None:
                        await js.publish(subject, payload)

                    cmds.append(publish)
                out.append(cmds)
            return out

        raw = await drive("raw js.publish", raw_commands(events), 1, meter())

        # -- event store, one event per command --------------------------------------------
        async def store_run(tag: str, size: int) -> tuple[Result, JetStreamEventStore]:
            store = store_for(tag)
            await store.ensure_streams()
            versions = dict.fromkeys(ids, 0)
            counter = 0
            out: list[list[Callable[[], Awaitable[None]]]] = []
            for mine in per_writer:
                cmds: list[Callable[[], Awaitable[None]]] = []
                for i in range(events // size // concurrency):
                    agg = mine[i % len(mine)]
                    # The caller's events exist before it appends (the raw row's payload
                    # is made before its clock starts too); the envelope, the event id
                    # and the encoding are the store's work, timed.
                    made = [typical_event(counter + k) for k in range(size)]
                    counter += size

                    async def command(agg: str = agg, made: list[Any] = made) -> None:
                        batch = [NewEvent(e) for e in made]
                        result = await store.append(agg, batch, versions[agg])
                        versions[agg] = result.last_version

                    cmds.append(command)
                out.append(cmds)
            name = "store single-event" if size == 1 else f"store {size}-event cmds"
            return await drive(name, out, size, meter()), store

        single, single_store = await store_run("single", 1)
        batch, _ = await store_run("batch10", 10)

        # A raw client storing 10-event commands must publish ten times per command.
        raw10 = await drive(
            "raw js.publish x10",
            [
                [_tenfold(cmds[i : i + 10]) for i in range(0, len(cmds) // 10 * 10, 10)]
                for cmds in raw_commands(events)
            ],
            10,
            meter(),
        )

        print(raw.line())
        print(single.line(raw))
        print(raw10.line())
        print(batch.line(raw10) + f"  ({batch.rate / raw.rate:4.2f}x raw single)")

        info = await single_store.stream_info()
        state = info["state"]
        stored = [f"stream state {state['bytes'] / state['messages']:.0f} (single-event stream)"]
        if proc is not None:
            for name in ("BENCH_single", "BENCH_batch10", "BENCH_RAW"):
                stream_dir = tmp / "nats" / "jetstream" / "jetstream" / "$G" / "streams" / name
                raw_info = await js.stream_info(name)
                n = raw_info.state.messages
                stored.append(f"on disk (s2) {name} {du(stream_dir) / n:.0f}")
        print("stored bytes/event: " + "; ".join(stored))
        await probe.close()
        return Pass(sync, raw, single, raw10, batch, stored)
    finally:
        await nc.close()
        stop(proc)


def _tenfold(cmds: list[Callable[[], Awaitable[None]]]) -> Callable[[], Awaitable[None]]:
    async def ten() -> None:
        for c in cmds:
            await c()

    return ten


def table(passes: list[Pass], aggregates: int, concurrency: int) -> Table:
    t = Table(
        f"Event store appends beside raw `js.publish`: typical events over {aggregates:,} "
        f"aggregates, {concurrency} writers, same server, same run",
        ["server sync", "row", "events/s", "command latency", "vs raw", "CPU ms per event"],
        label_columns=2,
    )
    for p in passes:
        sync = f"{p.sync or 'default (2m)'}, {p.raw.events:,} events"
        r_single = p.single.rate / p.raw.rate
        r_batch = p.batch.rate / p.raw10.rate
        single_aims = [Aim.at_least("≥ 0.8x raw", r_single, 0.8)] if p.sync is None else []
        batch_aims = [Aim.at_least("≥ 1x raw x10 per event", r_batch, 1.0)] if p.sync else []
        t.row([sync, "raw `js.publish`", *_cells(p.raw, "")])
        t.row([sync, "store, 1-event commands", *_cells(p.single, ratio(r_single))], single_aims)
        t.row([sync, "raw, 10 publishes per command", *_cells(p.raw10, "")])
        t.row(
            [sync, "store, 10-event commands (atomic)", *_cells(p.batch, ratio(r_batch))],
            batch_aims,
        )
    for p in passes:
        t.note(f"Stored bytes per event, sync {p.sync or 'default'}: " + "; ".join(p.stored) + ".")
    t.note(
        "CPU ms per event: the bench process (the writers) + nats-server, over the row; "
        f"of {CPUS} cores."
    )
    return t


def _cells(r: Result, vs: str) -> list[str]:
    cpu = r.cpu.cells() if r.cpu else "n/a"
    return [f"{r.rate:,.0f}", f"p50 {ms(r.pct(0.5))}, p99 {ms(r.pct(0.99))}", vs, cpu]


QUICK = ["--events", "2000", "--aggregates", "100", "--always-events", "500"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--aggregates", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--always-events",
        type=int,
        default=10_000,
        help="events for the second pass on a server with sync_interval: always (0 skips it)",
    )
    args = parser.parse_args(argv)
    passes = [asyncio.run(run(args.events, args.aggregates, args.concurrency, None))]
    if args.always_events:
        # Production fsyncs every write: the durability atomic batches always pay on R1.
        passes.append(
            asyncio.run(run(args.always_events, args.aggregates, args.concurrency, "always"))
        )
    return show([table(passes, args.aggregates, args.concurrency)])


if __name__ == "__main__":
    main()
