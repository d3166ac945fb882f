"""What a stream's mirror costs its reads (the partition mirrors of scale-out).

nats-server makes every mirror of a stream with direct gets one of that stream's
direct-get responders, and a partition mirror maps its subjects, so the client checks
who answered each direct get and asks the stream's leader (``STREAM.MSG.GET``) when a
mirror did, or when the answer is "not found" (see ``jetsource.eventstore.jsapi``).
This measures the reads the event store makes, on one server, without a mirror and
with one partition mirror, in the same run:

- a page of one aggregate's events (a history read: batched direct get by subject);
- the last event of an aggregate (the tail an append's optimistic concurrency reads);
- the same for an aggregate with no events (a "not found", always checked);
- the leader's ``STREAM.MSG.GET`` alone, for comparison.

    python -m bench.bench_mirror_reads [--reads 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from bench.common import Stats, Table, exit_on_signals, ratio, scratch_dir, show, stop
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.eventstore import jsapi
from jetsource.projection.partitions import mirror_config

STREAM, PREFIX = "BENCH_MIRROR", "bench.events"


async def measure(name: str, fn: Callable[[], Awaitable[Any]], reads: int) -> Stats:
    latencies = []
    start = time.perf_counter()
    for _ in range(reads):
        t = time.perf_counter()
        await fn()
        latencies.append(time.perf_counter() - t)
    return Stats(name, latencies, time.perf_counter() - start)


async def run(reads: int) -> list[tuple[str, list[Stats]]]:
    home = scratch_dir("bench-mirror-")
    server = NatsServer(home, port=free_port(), monitor_port=free_port())
    proc = server.start()
    try:
        server.wait_ready(proc, 30)
        nc = await nats.connect(server.address())
        replies = jsapi.Replies(nc)
        await replies.start()
        config = {"name": STREAM, "subjects": [f"{PREFIX}.>"], "allow_direct": True}
        await jsapi.api(replies, f"STREAM.CREATE.{STREAM}", config, 5)
        js = nc.jetstream()
        for i in range(200):
            for _ in range(5):
                await js.publish(f"{PREFIX}.a{i}.E", b"x" * 300)
        t = 5.0
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "history page (5 events)": lambda: jsapi.direct_get_page(
                replies, STREAM, f"{PREFIX}.a7.*", 1, 1000, t
            ),
            "tail of an aggregate": lambda: jsapi.last_for_subject(
                replies, STREAM, f"{PREFIX}.a7.*", t
            ),
            "tail of a new aggregate (not found)": lambda: jsapi.last_for_subject(
                replies, STREAM, f"{PREFIX}.none.*", t
            ),
            "leader's STREAM.MSG.GET": lambda: jsapi.leader_get(
                replies, STREAM, {"last_by_subj": f"{PREFIX}.a7.E"}, t
            ),
        }
        out: list[tuple[str, list[Stats]]] = []
        for setup in ("no mirror", "one partition mirror"):
            if setup != "no mirror":
                mirror = mirror_config(STREAM, PREFIX, 8, 1)
                await jsapi.api(replies, f"STREAM.CREATE.{mirror['name']}", mirror, 5)
                for _ in range(100):
                    info = await jsapi.api(replies, f"STREAM.INFO.{mirror['name']}", {}, 5)
                    if info["state"]["messages"] >= 1000:
                        break
                    await asyncio.sleep(0.05)
                # The mirror joins the responders at its next message once caught up.
                await js.publish(f"{PREFIX}.late.E", b"l")
                await asyncio.sleep(0.5)
            out.append((setup, [await measure(n, fn, reads) for n, fn in calls.items()]))
        await replies.stop()
        await nc.close()
        return out
    finally:
        stop(proc)


def table(results: list[tuple[str, list[Stats]]]) -> Table:
    t = Table(
        "Reads of a stream with a partition mirror (one server)",
        ["read", "setup", "p50", "p99", "p50 vs no mirror"],
        label_columns=2,
    )
    base = {s.name: s for s in results[0][1]}
    for setup, stats in results:
        for s in stats:
            versus = ratio(s.p50 / base[s.name].p50) if setup != "no mirror" else ""
            t.row([s.name, setup, f"{s.p50:.2f} ms", f"{s.p99:.2f} ms", versus])
    t.note(
        "A mirror answers a share of its origin's direct gets (nats-server turns "
        "mirror_direct on for it); the client asks the leader again when a mirror answered "
        "or the answer was 'not found', and sends single gets of a stream seen mirrored to "
        "the leader for 60 s. A page from a mirror is asked for again (one mirror: about "
        "two requests per page). 'vs no mirror': p50 over the same read's p50 without one."
    )
    return t


QUICK = ["--reads", "50"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000, help="reads per row")
    args = parser.parse_args(argv)
    return show([table(asyncio.run(run(args.reads)))])


if __name__ == "__main__":
    main()
