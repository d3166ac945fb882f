"""The observer's ingest beside raw nats-py `js.publish` of the same bytes, same run, same server.

Workload: typical process events (a JSON object of five fields, two attributes) over
PROCESSES processes, every event with its own event id (as the SDK and the JSONL
adapter send them: each id is claimed, so a retry is a duplicate forever).
  - raw: `js.publish` of the bytes the observer stores for such an event (the
    envelope) to the same subjects of a stream with the same configuration, no
    headers, awaited one by one per writer by WRITERS writers (the plain client's way);
  - RecordBatch: CLIENTS gRPC clients, each sending batches of BATCH events spread
    over the processes (per process atomic, in order), through the observer as its
    own process;
  - RecordBatch without ids: the same with no event ids (the observer assigns them;
    nothing to claim), to show what the forever-idempotency costs;
  - Record: 16 concurrent clients, one event per call, each on its own process.
CPU per event: the bench process (clients), the observer and nats-server.

    python -m bench.bench_observer [--events N] [--record-events N] [--processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import grpc
import nats
from google.protobuf import struct_pb2

from bench.common import (
    CPUS,
    Aim,
    CpuMeter,
    Stats,
    Table,
    exit_on_signals,
    ratio,
    raw_stream,
    scratch_dir,
    show,
    stop,
)
from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.devstack.services import GrpcService
from jetsource.domains.process.events import registry
from jetsource.domains.process.validation import Limits, to_new_event
from jetsource.eventstore.common import stored_envelope

WRITERS = 16


def typical(process_id: str, n: int, with_id: bool) -> epb.CanonicalEvent:
    data = struct_pb2.Struct()
    data.update(
        {
            "step": n,
            "tool": "search",
            "query": "jetstream atomic batch publish",
            "tokens": 1234,
            "ok": True,
        }
    )
    e = epb.CanonicalEvent(
        event_id=f"b-{uuid.uuid4().hex}" if with_id else "",
        process_id=process_id,
        event_type="tool_called",
        source="bench",
        data=data,
        attributes={"model": "small", "run": "bench"},
    )
    e.occurred_at.FromNanoseconds(time.time_ns())
    return e


def stored_bytes(e: epb.CanonicalEvent) -> bytes:
    new = to_new_event(e, Limits())
    _, version, payload = registry.encode(new.event, new.event_type, new.schema_version)
    return stored_envelope(new, version, 1, payload, time.time_ns()).SerializeToString()


async def raw_run(url: str, events: int, processes: list[str], meter: CpuMeter) -> Stats:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(raw_stream("BENCH_RAW_PROCESS", "benchraw.>"))
    payload = stored_bytes(typical(processes[0], 0, True))
    latencies: list[float] = []

    async def writer(w: int) -> None:
        for i in range(events // WRITERS):
            subject = f"benchraw.{processes[(w + i * WRITERS) % len(processes)]}.tool_called"
            t0 = time.perf_counter()
            await js.publish(subject, payload)
            latencies.append(time.perf_counter() - t0)

    meter.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    s = Stats("raw js.publish", latencies, time.perf_counter() - t0)
    s.cpu = meter.stop(len(latencies))
    await nc.close()
    return s


async def batch_run(
    target: str,
    name: str,
    events: int,
    batch: int,
    clients: int,
    processes: list[str],
    with_ids: bool,
    meter: CpuMeter,
) -> Stats:
    """Stats of events (each batch's latency counted once per event it carried)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ObserverServiceStub(channel)
        batches_per_client = max(1, events // batch // clients)
        requests = [
            [
                pb.RecordBatchRequest(
                    events=[
                        typical(processes[(c * 7919 + b * batch + i) % len(processes)], i, with_ids)
                        for i in range(batch)
                    ]
                )
                for b in range(batches_per_client)
            ]
            for c in range(clients)
        ]
        latencies: list[float] = []

        async def client(mine: list[pb.RecordBatchRequest]) -> None:
            for request in mine:
                t0 = time.perf_counter()
                response = await stub.RecordBatch(request, timeout=60)
                assert len(response.positions) == len(request.events)
                latencies.extend([time.perf_counter() - t0] * len(request.events))

        meter.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(r) for r in requests))
        s = Stats(name, latencies, time.perf_counter() - t0)
        s.cpu = meter.stop(len(latencies))
        return s


async def record_run(target: str, events: int, clients: int, tag: str, meter: CpuMeter) -> Stats:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ObserverServiceStub(channel)
        latencies: list[float] = []

        async def client(c: int) -> None:
            process = f"rec-{tag}-{c}"
            for i in range(events // clients):
                request = pb.RecordRequest(event=typical(process, i, True))
                t0 = time.perf_counter()
                await stub.Record(request, timeout=10)
                latencies.append(time.perf_counter() - t0)

        # warm-up: connections and the observer's first appends
        await asyncio.gather(
            *(
                stub.Record(pb.RecordRequest(event=typical(f"rec-{tag}-w{c}", 0, True)))
                for c in range(clients)
            )
        )
        meter.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        s = Stats(f"Record, {clients} clients", latencies, time.perf_counter() - t0)
        s.cpu = meter.stop(len(latencies))
        return s


async def run(events: int, record_events: int, n_processes: int, batch: int, clients: int) -> Table:
    tmp = scratch_dir("jetsource-bench-observer-")
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
        target = service.address()
        pids = {"observer": observer_proc.pid, "nats-server": nats_proc.pid}
        processes = [f"proc-{i:04d}" for i in range(n_processes)]
        print(
            f"{events:,} events over {n_processes:,} processes; batches of {batch} from "
            f"{clients} clients; Record: {record_events:,} events from 16 clients; cpus={CPUS}"
        )
        raw = await raw_run(
            server.address(), events, processes, CpuMeter({"nats-server": nats_proc.pid})
        )
        print(raw.line(unit="ev/s"))
        rb = await batch_run(
            target,
            "RecordBatch (event ids)",
            events,
            batch,
            clients,
            processes,
            True,
            CpuMeter(pids),
        )
        print(rb.line(raw, unit="ev/s"))
        rb_noid = await batch_run(
            target, "RecordBatch (no ids)", events, batch, clients, processes, False, CpuMeter(pids)
        )
        print(rb_noid.line(raw, unit="ev/s"))
        rec = await record_run(target, record_events, 16, uuid.uuid4().hex[:6], CpuMeter(pids))
        print(rec.line(unit="ev/s"))
    finally:
        stop(observer_proc)
        stop(nats_proc)
    return table(raw, rb, rb_noid, rec, n_processes, batch, clients)


def table(
    raw: Stats, rb: Stats, rb_noid: Stats, rec: Stats, processes: int, batch: int, clients: int
) -> Table:
    t = Table(
        f"Observer ingest beside raw `js.publish` of the same bytes: typical process events "
        f"over {processes:,} processes, same server, same run",
        ["row", "events/s", "latency", "vs raw", "CPU ms per event"],
    )

    def cells(s: Stats, vs: str) -> list[str]:
        cpu = s.cpu.cells() if s.cpu else "n/a"
        return [s.name, f"{s.rate:,.0f}", f"p50 {s.p50:.2f} ms, p99 {s.p99:.2f} ms", vs, cpu]

    r_ids, r_noid = rb.rate / raw.rate, rb_noid.rate / raw.rate
    t.row(cells(raw, ""))
    t.row(
        cells(rb, ratio(r_ids)),
        [
            Aim.at_least("≥ 20,000 events/s", rb.rate, 20_000),
            Aim.at_least("≥ 0.5x raw", r_ids, 0.5),
        ],
    )
    t.row(cells(rb_noid, ratio(r_noid)), [Aim.at_least("≥ 20,000 events/s", rb_noid.rate, 20_000)])
    t.row(
        cells(rec, ""),
        [
            Aim.at_most("p99 < 10 ms", rec.p99, 10.0),
            Aim.at_most("users' p99 < 50 ms", rec.p99, 50.0),
        ],
    )
    t.note(
        f"raw: {WRITERS} writers, each awaiting one `js.publish` at a time (no headers, no "
        f"dedupe, no order per process). RecordBatch: {clients} clients, batches of {batch} "
        "events spread over the processes; the latency is the batch's. Record: one event "
        "per call, each client on its own process; every event has an event id (claimed)."
    )
    t.note(f"nats-server with its default sync (2m); CPU of {CPUS} cores shared by everything.")
    return t


QUICK = ["--events", "4000", "--record-events", "800", "--processes", "100"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--record-events", type=int, default=8_000)
    parser.add_argument("--processes", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    return show(
        [
            asyncio.run(
                run(args.events, args.record_events, args.processes, args.batch, args.clients)
            )
        ]
    )


if __name__ == "__main__":
    main()
