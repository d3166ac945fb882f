"""What the server does per atomic batch, and which path a multi-event command takes.

Issue 23 asks what an atomic batch costs on R1 and R3 streams with ``sync_interval`` at
the default (2 minutes) and ``always``, and for the faster *correct* path per command
size. A command's events are appended in one of two ways that keep the aggregate's
optimistic concurrency:

- **one atomic batch** (what the event store does): every event of the command sent at
  once, the first with the aggregate's expected last sequence, stored together or not
  at all, one acknowledgement;
- **chained single publishes**: each event awaited before the next, each expecting the
  aggregate's last sequence to be the one the previous acknowledgement gave. Not atomic:
  a writer that dies in between leaves part of a command stored. The chain cannot be
  pipelined: the next expectation is only known from the previous acknowledgement.

Both are measured on the same server in the same run, with 1 writer and with 16
writers on distinct aggregates, plus a plain single publish (1-event commands), for
file storage on one server (sync default and always), memory storage, and a three-node
cluster on loopback (R3, sync default and always).

    python -m bench.bench_batches [--commands 400] [--size 10] [--no-cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats

from bench.common import CpuMeter, Stats, Table, exit_on_signals, ms, ratio, scratch_dir, show, stop
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage

PAYLOAD = os.urandom(160)  # about a typical stored event


@dataclass
class Setup:
    label: str
    replicas: int
    storage: str  # "file" | "memory"
    sync: str | None


SETUPS = [
    Setup("R1 file, sync default (2m)", 1, "file", None),
    Setup("R1 file, sync always", 1, "file", "always"),
    Setup("R1 memory", 1, "memory", None),
    Setup("R3 file, sync default (2m)", 3, "file", None),
    Setup("R3 file, sync always", 3, "file", "always"),
]


def start_servers(home: Path, setup: Setup, procs: list[Any]) -> list[NatsServer]:
    """One nats-server, or three routed to each other on loopback; each process is
    added to ``procs`` as it starts (the caller stops them)."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(setup.replicas)]
    routes = ", ".join(f'"nats-route://127.0.0.1:{r}"' for _, _, r in ports)
    nodes = []
    for i, (client, monitor, route) in enumerate(ports):
        extra = ""
        if setup.replicas > 1:
            extra = (
                f'cluster {{\n  name: bench\n  listen: "127.0.0.1:{route}"\n'
                f"  routes: [{routes}]\n}}\n"
            )
        node = NatsServer(
            home / f"n{i}",
            port=client,
            monitor_port=monitor,
            sync_interval=setup.sync,
            server_name=f"n{i}",
            extra_config=extra,
        )
        nodes.append(node)
        procs.append(node.start())
    for node, proc in zip(nodes, procs, strict=True):
        node.wait_ready(proc, 60)
    return nodes


async def add_stream(replies: jsapi.Replies, setup: Setup) -> None:
    config = {
        "name": "BATCHES",
        "subjects": ["b.>"],
        "storage": setup.storage,
        "num_replicas": setup.replicas,
        "allow_atomic": True,
        "allow_direct": True,
    }
    deadline = time.monotonic() + 60
    while True:  # a new cluster may not have elected its meta leader yet
        try:
            await jsapi.api(replies, "STREAM.CREATE.BATCHES", config, 5)
            return
        except (jsapi.JsApiError, TimeoutError, nats.errors.NoRespondersError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


events: dict[str, int] = {}  # row name -> events per command


async def drive(fn: Callable[[str], Awaitable[None]], aggs: list[str], per: int) -> list[float]:
    """Each aggregate's writer runs ``per`` commands one after another; all at once."""
    latencies: list[float] = []

    async def writer(agg: str) -> None:
        for _ in range(per):
            t0 = time.perf_counter()
            await fn(agg)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(writer(a) for a in aggs))
    return latencies


async def run_setup(setup: Setup, commands: int, size: int, writers: list[int]) -> list[Stats]:
    home = scratch_dir("jetsource-bench-batches-")
    procs: list[Any] = []
    out: list[Stats] = []
    nc = None
    replies = None
    try:
        nodes = start_servers(home, setup, procs)
        pids = {f"nats-server n{i}": p.pid for i, p in enumerate(procs)}
        nc = await nats.connect(servers=[n.address() for n in nodes])
        replies = jsapi.Replies(nc)
        await replies.start()
        await add_stream(replies, setup)
        last: dict[str, int] = {}

        def message(agg: str, i: int, expect: int | None) -> OutMessage:
            headers = {"Nats-Msg-Id": uuid.uuid4().hex}
            if expect is not None:
                # The aggregate's subjects, as the event store guards them.
                headers["Nats-Expected-Last-Subject-Sequence"] = str(expect)
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = f"b.{agg}.>"
            return OutMessage(f"b.{agg}.E{i}", PAYLOAD, headers)

        async def atomic(agg: str) -> None:
            msgs = [message(agg, i, last[agg] if i == 0 else None) for i in range(size)]
            ack = await jsapi.publish_atomic_batch(replies, msgs, uuid.uuid4().hex, 10)
            last[agg] = ack.seq

        async def chained(agg: str) -> None:
            for i in range(size):
                ack = await jsapi.publish(replies, message(agg, i, last[agg]), 10)
                last[agg] = ack.seq

        async def single(agg: str) -> None:
            ack = await jsapi.publish(replies, message(agg, 0, last[agg]), 10)
            last[agg] = ack.seq

        paths = (
            ("atomic", f"{size} events, one atomic batch", atomic, size),
            ("chained", f"{size} events, chained single publishes", chained, size),
            ("single", "1 event, single publish", single, 1),
        )
        for tag, path, fn, n_events in paths:
            for w in writers:
                aggs = [f"{tag}-{w}-{k}" for k in range(w)]
                last.update(dict.fromkeys(aggs, 0))
                meter = CpuMeter(pids)
                meter.start()
                t0 = time.perf_counter()
                latencies = await drive(fn, aggs, max(1, commands // w))
                stats = Stats(f"{setup.label} | {path} | {w}", latencies, 0.0)
                stats.seconds = time.perf_counter() - t0
                stats.cpu = meter.stop(len(latencies) * n_events)
                out.append(stats)
                events[stats.name] = n_events
                print(
                    f"{stats.name:<76} {stats.rate * n_events:>8,.0f} ev/s  "
                    f"p50 {ms(stats.p50)}  p99 {ms(stats.p99)}",
                    flush=True,
                )
    finally:
        if replies is not None:
            await replies.stop()
        if nc is not None:
            await nc.close()
        for p in procs:  # every server started, also when a later one failed to come up
            stop(p)
    return out


def table(results: list[Stats], size: int) -> Table:
    t = Table(
        f"Multi-event commands: one atomic batch vs {size} chained single publishes, "
        "per server setup",
        ["setup", "path", "writers", "events/s", "command latency", "batch vs chained"],
        label_columns=3,
    )
    by_key = {s.name: s for s in results}
    for s in results:
        setup, path, writers = (x.strip() for x in s.name.split("|"))
        rate = s.rate * events[s.name]
        versus = ""
        if "atomic" in path:
            other = by_key.get(s.name.replace("one atomic batch", "chained single publishes"))
            if other is not None and other.rate:
                versus = ratio(s.rate / other.rate)
        t.row([setup, path, writers, f"{rate:,.0f}", s.latency(), versus])
    t.note(
        "Chained publishes are not atomic (a writer that dies between two leaves part of a "
        "command stored); they are the only correct alternative to a batch because each "
        "expectation needs the previous acknowledgement. 'batch vs chained': the batch's "
        "commands per second over the chain's, same setup and writers."
    )
    return t


QUICK = ["--commands", "40", "--no-cluster"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--commands", type=int, default=400, help="commands per row")
    parser.add_argument("--size", type=int, default=10, help="events per command")
    parser.add_argument("--writers", default="1,16")
    parser.add_argument("--no-cluster", action="store_true", help="skip the R3 setups")
    args = parser.parse_args(argv)
    writers = [int(w) for w in args.writers.split(",")]
    results: list[Stats] = []
    for setup in SETUPS:
        if setup.replicas > 1 and args.no_cluster:
            continue
        results += asyncio.run(run_setup(setup, args.commands, args.size, writers))
    return show([table(results, args.size)])


if __name__ == "__main__":
    main()
