"""Flame graphs of the command path, checked in under bench/profiles/ (issue 23).

    python -m bench.profile [--commands 300] [--clients 16] [--rate 250]

Starts nats-server and the publisher as its own process (default settings), seeds
1,000-event stories, and records the publisher with py-spy while CLIENTS gRPC
clients send DecisionAdded commands (the bench_publisher workload). Writes
bench/profiles/publisher-<clients>-clients.svg (py-spy's flame graph) and a .txt
with the functions that take the most samples, inclusive and self, so the share of
gRPC, the command handler and the event store can be read without a browser.
py-spy must be installed (it is in the dev extra) and allowed to attach (root, or
ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.bench_publisher import drive_jetsource, seed_jetsource
from bench.common import CpuMeter, scratch_dir
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.devstack.services import GrpcService

OUT = Path(__file__).parent / "profiles"


def _frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else name


def summary(raw: Path, top: int = 40) -> str:
    """Inclusive and self shares of py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    roots: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
        roots[frames[0]] += n
    out = [f"{total} samples", "", "by thread (the stacks' first frames):"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in roots.most_common(8)]
    out += ["", "inclusive:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(out) + "\n"


def run(commands: int, clients: int, rate: int) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tmp = scratch_dir("jetsource-profile-")
    server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    nats_proc = server.start()
    server.wait_ready(nats_proc, 30)
    port = free_port()
    env = {
        **os.environ,
        "JETSOURCE_NATS__URL": server.address(),
        "JETSOURCE_PUBLISHER__GRPC_PORT": str(port),
        "JETSOURCE_PUBLISHER__METRICS_PORT": "0",
    }
    service = GrpcService(
        "publisher", "jetsource.publisher.server", tmp / "pub", "127.0.0.1", port, env=env
    )
    publisher = service.start()
    try:
        service.wait_ready(publisher, 60)
        stories = [f"profile-{i}" for i in range(clients)]
        asyncio.run(seed_jetsource(server.address(), stories, 1000))
        OUT.mkdir(exist_ok=True)
        stem = OUT / f"publisher-{clients}-clients"
        raw = tmp / "publisher.raw"
        record = [spy, "record", "-r", str(rate), "-p", str(publisher.pid), "--nonblocking"]
        flame = subprocess.Popen([*record, "-f", "flamegraph", "-o", f"{stem}.svg"])
        collapsed = subprocess.Popen([*record, "-f", "raw", "-o", str(raw)])
        time.sleep(1.0)
        meter = CpuMeter({"publisher": publisher.pid})
        stats = asyncio.run(
            drive_jetsource("profiled", service.address(), stories, commands, meter)
        )
        for p in (flame, collapsed):
            p.send_signal(2)
            p.wait(60)
        head = (
            f"python -m bench.profile --commands {commands} --clients {clients} --rate {rate}\n"
            f"{stats.line()}\n{stats.cpu.cells() if stats.cpu else ''}\n\n"
        )
        Path(f"{stem}.txt").write_text(head + summary(raw))
        print(head + f"wrote {stem}.svg and {stem}.txt")
    finally:
        for p in (publisher, nats_proc):
            p.terminate()
            p.wait(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args(argv)
    run(args.commands, args.clients, args.rate)


if __name__ == "__main__":
    main()
