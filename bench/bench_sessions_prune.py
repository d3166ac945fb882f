"""Sessions: a dry-run ``sessions prune`` over many ended sessions, on the ledger reader
(the stream itself, the default).

Workload: SESSIONS completed sessions (session_started, session_ended), each with one
child process, on a stream of their own on a real nats-server; then ``Sessions.prune``
with ``--dry-run``, keep 0, older than 1 ms: every one is chosen. Timed whole (what
``jetsource sessions prune --keep 0 --older-than 1s --dry-run`` waits for), with the
number of reads of the process lifecycle (every process's started/ended events) and
their time. The rest is the list's tail of every session (32 at a time) and, for the
dry run's count, the stream's count of each nested process's messages.

    python -m bench.bench_sessions_prune [--sessions N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from google.protobuf import struct_pb2

from bench.common import CPUS, Stats, Table, exit_on_signals, scratch_dir, show, stop
from jetsource._gen.process.v1 import events_pb2
from jetsource.core.settings import NatsSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.emit import Session
from jetsource.domains.sessions.format import new_session_id
from jetsource.domains.sessions.ledger import LedgerReader
from jetsource.domains.sessions.settings import SessionsAppSettings, SessionsSettings


async def fill(client: SessionsClient, n: int) -> None:
    for at in range(0, n, 200):
        ss = [Session(client.writer, "bench prune", validation="off", heartbeat_s=60)
              for _ in range(min(200, n - at))]  # fmt: skip
        await asyncio.gather(*(s.__aenter__() for s in ss))
        await asyncio.gather(*(_child(client, s.id) for s in ss))
        await asyncio.gather(*(s.close() for s in ss))
        print(f"  {at + len(ss):,} sessions", end="\r", flush=True)
    print()


async def _child(client: SessionsClient, parent: str) -> None:
    """A component's own process nested under the session (as the SDK records it)."""
    data = struct_pb2.Struct()
    data.update({"kind": "task", "name": "step"})
    child = new_session_id()
    await client.writer.record(
        [
            events_pb2.CanonicalEvent(
                process_id=child, parent_process_id=parent, event_type="process_started", data=data
            ),
            events_pb2.CanonicalEvent(
                process_id=child, parent_process_id=parent, event_type="process_completed"
            ),
        ]
    )


async def run(sessions: int, runs: int) -> Table:
    tmp = scratch_dir("jetsource-bench-prune-")
    server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    nats_proc = server.start()
    server.wait_ready(nats_proc, 30)
    reads, spent = [0], [0.0]
    original = LedgerReader.lifecycle

    async def counted(self: LedgerReader, to_seq: int | None = None) -> object:
        reads[0] += 1
        t0 = time.perf_counter()
        try:
            return await original(self, to_seq)
        finally:
            spent[0] += time.perf_counter() - t0

    LedgerReader.lifecycle = counted  # type: ignore[assignment,method-assign]
    try:
        settings = SessionsAppSettings(
            nats=NatsSettings(url=server.address()),
            sessions=SessionsSettings(stream="SESSIONS_PRUNE", subject_prefix="sessprune.events"),
        )
        async with open_sessions(settings) as client:
            await client.store.ensure_streams()
            t0 = time.perf_counter()
            await fill(client, sessions)
            print(f"{sessions:,} sessions written in {time.perf_counter() - t0:.1f} s; cpus={CPUS}")
            times, counts = [], []
            for _ in range(runs):
                reads[0], spent[0] = 0, 0.0
                t0 = time.perf_counter()
                report = await client.sessions.prune(None, 0.001, 0, True)
                times.append(time.perf_counter() - t0)
                counts.append(reads[0])
                assert len(report.pruned) == sessions, len(report.pruned)
                print(
                    f"  dry-run prune: {times[-1]:.2f} s, {reads[0]} lifecycle reads "
                    f"({spent[0]:.2f} s), "
                    f"{len(report.pruned):,} sessions, {report.processes:,} processes"
                )
    finally:
        LedgerReader.lifecycle = original  # type: ignore[method-assign]
        stop(nats_proc)
    t = Table(
        f"Sessions: dry-run prune of {sessions:,} ended sessions (ledger reader)",
        ["row", "runs", "p50", "min", "max", "lifecycle reads"],
    )
    s = Stats("prune --dry-run", times, sum(times))
    t.row(
        [s.name, f"{runs}", f"{s.p50 / 1000:.2f} s", f"{min(times):.2f} s",
         f"{max(times):.2f} s", f"{max(counts)}"],
        [],
    )  # fmt: skip
    t.note(f"nats-server with its default sync (2m); {CPUS} cores shared by everything.")
    return t


QUICK = ["--sessions", "200", "--runs", "1"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    return show([asyncio.run(run(args.sessions, args.runs))])


if __name__ == "__main__":
    main()
