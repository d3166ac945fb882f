"""Omni normalizer throughput: webhook bodies of each wire format through normalize().

In process, no servers: the normalizers are pure functions. Each row cycles through the
format's fixture bodies (tests/fixtures/omni: text, media, receipts, reactions, ...) and
times every call. "parse + normalize + encode" adds what the ingress does around it per
webhook (json.loads of the body and protobuf encoding of each event).

    python -m bench.bench_omni_normalize            200,000 webhooks per format
    python -m bench.bench_omni_normalize --webhooks 2000

Aims are derived from issue #17's ingest aim (p99 < 10 ms per event at 500 webhooks/s):
normalizing may take a tenth of that budget (p99 < 1 ms per webhook), and one core must
normalize ten times the aimed rate (5,000 webhooks/s).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from datetime import UTC, datetime

from tests.fixtures.omni import FIXTURES

from bench.common import Aim, CpuMeter, Stats, Table, exit_on_signals, pct, show
from jetsource.domains.omni.normalize import normalize

FORMATS = {
    "cloud": "WhatsApp Cloud API",
    "evolution": "Evolution API",
    "forwarder": "Discord gateway",
}
RECEIVED_AT = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)


def run(fmt: str, webhooks: int, encode: bool) -> tuple[Stats, int, float, list[float]]:
    fixtures = [f for f in FIXTURES if f.format == fmt and f.outcome == "normalized"]
    bodies = [(f.provider, f.instance, f.file.read_bytes()) for f in fixtures]
    parsed = [(p, i, json.loads(raw)) for p, i, raw in bodies]
    latencies: list[float] = []
    # CPU time of each call (this thread's clock): what the code costs, apart from the
    # time the scheduler gave to other processes in the middle of a call.
    cpu_times: list[float] = []
    events = 0
    meter = CpuMeter(client="normalizer").start()
    t0 = time.perf_counter()
    if encode:
        for provider, instance, raw in itertools.islice(itertools.cycle(bodies), webhooks):
            s, c = time.perf_counter(), time.thread_time()
            out = normalize(provider, instance, json.loads(raw), RECEIVED_AT, "raw")
            for e in out:
                e.SerializeToString()
            cpu_times.append(time.thread_time() - c)
            latencies.append(time.perf_counter() - s)
            events += len(out)
    else:
        for provider, instance, body in itertools.islice(itertools.cycle(parsed), webhooks):
            s, c = time.perf_counter(), time.thread_time()
            events += len(normalize(provider, instance, body, RECEIVED_AT, "raw"))
            cpu_times.append(time.thread_time() - c)
            latencies.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    cpu = meter.stop(webhooks)
    stats = Stats(FORMATS[fmt], latencies, wall)
    stats.cpu = cpu
    return stats, events, wall, cpu_times


QUICK = ["--webhooks", "2000"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=200_000, help="webhooks per format")
    args = parser.parse_args(argv)
    table = Table(
        "Omni normalizers: webhooks of each format through normalize(), one process",
        [
            "format",
            "step",
            "webhooks/s",
            "events/s",
            "latency per webhook",
            "CPU time per webhook",
        ],
        label_columns=2,
    )
    for fmt in FORMATS:
        kinds = sum(1 for f in FIXTURES if f.format == fmt and f.outcome == "normalized")
        for encode in (False, True):
            stats, events, wall, cpu_times = run(fmt, args.webhooks, encode)
            assert stats.cpu is not None
            aims = [
                Aim.at_most("p99 < 1 ms per webhook", stats.p99, 1.0),
                Aim.at_least("> 5,000 webhooks/s on one core", stats.rate, 5000),
            ]
            table.row(
                [
                    f"{FORMATS[fmt]} ({kinds} fixture kinds)",
                    "parse + normalize + encode" if encode else "normalize",
                    f"{stats.rate:,.0f}",
                    f"{events / wall:,.0f}",
                    stats.latency(),
                    f"mean {stats.cpu.total / max(1, stats.count) * 1000:.3f} ms, "
                    f"p99 {pct(cpu_times, 0.99) * 1000:.3f} ms",
                ],
                aims,
            )
    table.note(
        f"{args.webhooks:,} webhooks per row, cycling through the format's fixtures. Aims derived "
        "from issue #17's ingest aim (p99 < 10 ms at 500 webhooks/s): a tenth of the latency "
        "budget, ten times the rate. Latency is wall time per call on a shared machine (the "
        "scheduler's pauses included); CPU time per call is what the code itself costs."
    )
    return show([table])


if __name__ == "__main__":
    main()
