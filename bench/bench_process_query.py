"""The process ledger's read side: how soon a recorded event is readable, and how fast a
big tree's timeline is read. Every service is its own process, as in production:
nats-server, valkey-server, the observer, the projector (the ``processes`` and
``process_timeline`` models) and the process query service.

  - visibility: one event at a time is recorded through the observer (Record) on a
    process of a live tree, while LOAD writers record into other processes; the time
    from the call's start (and from its ack) until the event is in the registry
    (GetProcess shows its process_seq) and in the timeline (a WatchProcess on the
    tree delivers it);
  - GetProcessTimeline, first page (100 events) of a tree of TREE events (a root and
    CHILDREN children): the whole tree (the root's tree index), a child's subtree
    (merged per process) and one process; and GetProcess, ListProcesses of the tree.

    python -m bench.bench_process_query [--probes 500] [--tree 10000] [--reads 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import time
import uuid

import grpc
from google.protobuf import struct_pb2
from tests.projector_fixtures import start_projector

from bench.common import CPUS, Aim, CpuMeter, Stats, Table, exit_on_signals, scratch_dir, show, stop
from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource._gen.process.v1 import observer_pb2_grpc as ob_grpc
from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource.devstack.servers import NatsServer, ValkeyServer, free_port
from jetsource.devstack.services import GrpcService

CHILDREN = 99
LOAD_WRITERS = 4
LOAD_RATE = 100  # events/s per load writer


def canonical(pid: str, kind: str, n: int, parent: str = "") -> epb.CanonicalEvent:
    data = struct_pb2.Struct()
    data.update({"step": n, "tool": "search", "tokens": 1234, "ok": True})
    e = epb.CanonicalEvent(
        process_id=pid, parent_process_id=parent, event_type=kind, source="bench", data=data
    )
    e.occurred_at.FromNanoseconds(time.time_ns())
    return e


async def seed_tree(stub: ob_grpc.ObserverServiceStub, root: str, events: int) -> None:
    """A root and CHILDREN children, ``events`` events in all, recorded in batches."""
    per = max(2, events // (CHILDREN + 1))
    procs = [(root, "")] + [(f"{root}-c{i}", root) for i in range(CHILDREN)]
    batch: list[epb.CanonicalEvent] = []
    for step in range(per):
        for pid, parent in procs:
            kind = "process_started" if step == 0 else "tool_called"
            batch.append(canonical(pid, kind, step, parent))
            if len(batch) == 500:
                await stub.RecordBatch(ob.RecordBatchRequest(events=batch), timeout=60)
                batch = []
    if batch:
        await stub.RecordBatch(ob.RecordBatchRequest(events=batch), timeout=60)


async def wait_count(reads: q_grpc.ProcessQueryServiceStub, pid: str, count: int) -> None:
    for _ in range(6000):
        with contextlib.suppress(grpc.aio.AioRpcError):
            got = await reads.GetProcess(q.GetProcessRequest(process_id=pid), timeout=5)
            if got.process.event_count >= count:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{pid} never reached {count} events in the registry")


async def visibility(
    record: ob_grpc.ObserverServiceStub,
    reads: q_grpc.ProcessQueryServiceStub,
    probes: int,
    meter: CpuMeter,
) -> tuple[Stats, Stats]:
    tag = uuid.uuid4().hex[:6]
    root, probe = f"vis-{tag}", f"vis-{tag}-probe"
    await record.Record(ob.RecordRequest(event=canonical(root, "process_started", 0)), timeout=10)
    await record.Record(
        ob.RecordRequest(event=canonical(probe, "process_started", 0, parent=root)), timeout=10
    )
    await wait_count(reads, probe, 1)
    stop_load = asyncio.Event()

    async def load(w: int) -> None:
        pid, n = f"load-{tag}-{w}", 0
        while not stop_load.is_set():
            await record.Record(ob.RecordRequest(event=canonical(pid, "tool_called", n)))
            n += 1
            await asyncio.sleep(1 / LOAD_RATE)

    seen: dict[int, float] = {}
    arrived = asyncio.Event()

    async def follow() -> None:
        # The registry (what wait_count reads) and the timeline (what a watch checks
        # first) are two read models: the root may be in the first before the second,
        # and the watch then answers NOT_FOUND. Ask again until it is there.
        for _ in range(200):
            call = reads.WatchProcess(q.WatchProcessRequest(process_id=root, subtree=True))
            try:
                async for item in call:
                    seen[item.event.global_seq] = time.perf_counter()
                    arrived.set()
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{root} never reached the timeline model")

    watcher = asyncio.create_task(follow())
    loaders = [asyncio.create_task(load(w)) for w in range(LOAD_WRITERS)]
    from_call: list[float] = []
    from_ack: list[float] = []
    meter.start()
    t_all = time.perf_counter()
    try:
        for n in range(probes):
            t0 = time.perf_counter()
            response = await record.Record(
                ob.RecordRequest(event=canonical(probe, "tool_called", n)), timeout=10
            )
            t_ack = time.perf_counter()
            pos = response.position
            while True:  # the registry: GetProcess shows the process_seq
                got = await reads.GetProcess(q.GetProcessRequest(process_id=probe), timeout=5)
                if got.process.last_process_seq >= pos.process_seq:
                    break
                await asyncio.sleep(0.0005)
            t_registry = time.perf_counter()
            while pos.global_seq not in seen:  # the timeline: the watch delivered it
                if watcher.done():  # its error, not a 10 s wait for nothing
                    watcher.result()
                    raise RuntimeError("the watch ended")
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 10)
            t_done = max(t_registry, seen[pos.global_seq])
            from_call.append(t_done - t0)
            from_ack.append(t_done - t_ack)
            await asyncio.sleep(0.005)
    finally:
        stop_load.set()
        await asyncio.gather(*loaders, return_exceptions=True)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    seconds = time.perf_counter() - t_all
    a = Stats("Record -> registry and timeline (from the call)", from_call, seconds)
    b = Stats("append ack -> registry and timeline", from_ack, seconds)
    a.cpu = meter.stop(len(from_call))
    return a, b


async def reads_run(
    reads: q_grpc.ProcessQueryServiceStub, name: str, call: object, request: object, n: int
) -> Stats:
    latencies: list[float] = []
    fn = call  # a unary-unary multicallable
    for _ in range(20):  # warm-up
        await fn(request, timeout=10)  # type: ignore[operator]
    t_all = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await fn(request, timeout=10)  # type: ignore[operator]
        latencies.append(time.perf_counter() - t0)
    return Stats(name, latencies, time.perf_counter() - t_all)


async def run(probes: int, tree: int, n_reads: int) -> list[Table]:
    tmp = scratch_dir("jetsource-bench-process-query-")
    nats_server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    valkey_server = ValkeyServer(tmp / "valkey", port=free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for server in (nats_server, valkey_server):
            proc = server.start()
            procs.append(proc)
            server.wait_ready(proc, 30)
        nats_pid, valkey_pid = procs[0].pid, procs[1].pid
        env = {
            **os.environ,
            "JETSOURCE_NATS__URL": nats_server.address(),
            "JETSOURCE_VALKEY__URL": f"redis://127.0.0.1:{valkey_server.port}/0",
            "JETSOURCE_LOG_LEVEL": "WARNING",
            "JETSOURCE_PROJECTOR__HTTP_PORT": str(free_port()),
            "JETSOURCE_PROJECTOR__MODELS": json.dumps(["processes", "process_timeline"]),
            "JETSOURCE_OBSERVER__METRICS_PORT": "0",
            "JETSOURCE_PROCESS_QUERY__METRICS_PORT": "0",
        }
        obs_port, q_port = free_port(), free_port()
        observer = GrpcService(
            "observer",
            "jetsource.observer.server",
            tmp / "observer",
            "127.0.0.1",
            obs_port,
            env={**env, "JETSOURCE_OBSERVER__GRPC_PORT": str(obs_port)},
        )
        query = GrpcService(
            "process-query",
            "jetsource.processquery.server",
            tmp / "process-query",
            "127.0.0.1",
            q_port,
            env={**env, "JETSOURCE_PROCESS_QUERY__GRPC_PORT": str(q_port)},
        )
        for service in (observer, query):
            proc = service.start()
            procs.append(proc)
            service.wait_ready(proc, 60)
        projector = start_projector(env, tmp / "projector.log")
        procs.append(projector)
        pids = {
            "observer": procs[2].pid,
            "process-query": procs[3].pid,
            "projector": projector.pid,
            "nats-server": nats_pid,
            "valkey-server": valkey_pid,
        }
        async with (
            grpc.aio.insecure_channel(observer.address()) as oc,
            grpc.aio.insecure_channel(query.address()) as qc,
        ):
            record, reads = ob_grpc.ObserverServiceStub(oc), q_grpc.ProcessQueryServiceStub(qc)
            print(
                f"visibility: {probes} probes under {LOAD_WRITERS}x{LOAD_RATE} events/s of load; "
                f"timeline reads: a {tree:,}-event tree of {CHILDREN + 1} processes; cpus={CPUS}"
            )
            vis_call, vis_ack = await visibility(record, reads, probes, CpuMeter(pids))
            print(vis_call.line(unit="ev/s"))
            print(vis_ack.line(unit="ev/s"))
            root = f"tree-{uuid.uuid4().hex[:6]}"
            await seed_tree(record, root, tree)
            per = max(2, tree // (CHILDREN + 1))
            await wait_count(reads, f"{root}-c{CHILDREN - 1}", per)
            await wait_count(reads, root, per)
            rows = [
                await reads_run(
                    reads,
                    f"timeline of the {tree:,}-event tree, first page",
                    reads.GetProcessTimeline,
                    q.GetProcessTimelineRequest(process_id=root, subtree=True, page_size=100),
                    n_reads,
                ),
                await reads_run(
                    reads,
                    "timeline of a child's subtree (merged), first page",
                    reads.GetProcessTimeline,
                    q.GetProcessTimelineRequest(
                        process_id=f"{root}-c0", subtree=True, page_size=100
                    ),
                    n_reads,
                ),
                await reads_run(
                    reads,
                    "timeline of one process, first page",
                    reads.GetProcessTimeline,
                    q.GetProcessTimelineRequest(process_id=f"{root}-c0", page_size=100),
                    n_reads,
                ),
                await reads_run(
                    reads,
                    "GetProcess",
                    reads.GetProcess,
                    q.GetProcessRequest(process_id=root),
                    n_reads,
                ),
                await reads_run(
                    reads,
                    "ListProcesses of the tree, first page (100)",
                    reads.ListProcesses,
                    q.ListProcessesRequest(root_process_id=root, page_size=100),
                    n_reads,
                ),
            ]
            for r in rows:
                print(r.line(unit="rd/s"))
    finally:
        for proc in reversed(procs):
            stop(proc)
    return tables(vis_call, vis_ack, rows, probes, tree)


def tables(
    vis_call: Stats, vis_ack: Stats, rows: list[Stats], probes: int, tree: int
) -> list[Table]:
    t = Table(
        "Process ledger: a recorded event visible in the registry and the timeline "
        "(observer -> projector -> process query service, each its own process)",
        ["measured", "p50", "p99", "CPU ms per probe"],
    )
    cpu = vis_call.cpu.cells() if vis_call.cpu else "n/a"
    t.row(
        [vis_call.name, f"{vis_call.p50:.2f} ms", f"{vis_call.p99:.2f} ms", cpu],
        [
            Aim.at_most("p50 < 20 ms", vis_call.p50, 20.0),
            Aim.at_most("p99 < 100 ms", vis_call.p99, 100.0),
        ],
    )
    t.row([vis_ack.name, f"{vis_ack.p50:.2f} ms", f"{vis_ack.p99:.2f} ms", ""])
    t.note(
        f"{probes} probes, one at a time, 5 ms apart, each a Record of one event on a child "
        f"of a live tree, while {LOAD_WRITERS} writers record {LOAD_RATE} events/s each "
        "into other processes. Visible = GetProcess shows its process_seq and a "
        "WatchProcess on the tree has delivered it (both models)."
    )
    r = Table(
        f"Process query service reads (a {tree:,}-event tree of {CHILDREN + 1} processes)",
        ["read", "reads/s", "p50", "p99"],
    )
    for i, s in enumerate(rows):
        aims = [Aim.at_most("first page p50 < 5 ms", s.p50, 5.0)] if i == 0 else []
        r.row([s.name, f"{s.rate:,.0f}", f"{s.p50:.2f} ms", f"{s.p99:.2f} ms"], aims)
    r.note("One client, one call at a time over gRPC; pages of 100 events or processes.")
    return [t, r]


QUICK = ["--probes", "20", "--tree", "1000", "--reads", "20"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--tree", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args(argv)
    return show(asyncio.run(run(args.probes, args.tree, args.reads)))


if __name__ == "__main__":
    main()
