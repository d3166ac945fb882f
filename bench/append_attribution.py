"""Where the event store's single-event append spends its time, beside raw `js.publish`
(issue 23): the workload of ``bench.bench_eventstore``'s 1-event row (1,000 aggregates,
32 writers, the same typical event), each variant run several times, interleaved, on one
server; CPU per event of this process (getrusage) and of nats-server (/proc/<pid>/stat).

Variants (each into its own fresh stream):
  raw        js.publish(subject, unsealed payload), no headers (the bench's raw row)
  sealed     raw with the store's sealed payload (the size sealing adds)
  msgid      raw + Nats-Msg-Id
  occ        raw + Nats-Expected-Last-Subject-Sequence (+ -Subject, the store's wildcard)
  occ1       raw + Nats-Expected-Last-Subject-Sequence on the exact subject (no filter)
  both       js.publish of exactly what the store sends (sealed payload, the three headers)
  storecfg   raw into a stream with the store's configuration (allow_atomic, discard new...)
  store      JetStreamEventStore.append, as the bench drives it (event built per command)

    python -m bench.append_attribution [--events N] [--rounds N] [--variants a,b,...]
        [--profile store]   (cProfile of that variant's last round, to bench-append.prof)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import resource
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from bench.bench_eventstore import typical_event
from bench.common import CpuMeter, scratch_dir
from jetsource.core.envelope import NewEvent
from jetsource.core.ids import uuid7
from jetsource.core.settings import EventStoreSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore, stream_config

_IO = {"select": 0, "reads": 0, "writes": 0}


def _count_io(nc: Any) -> None:
    """Count the loop's selector calls and the connection's socket reads and writes."""
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    select = selector.select

    def counted_select(timeout: Any = None) -> Any:
        _IO["select"] += 1
        return select(timeout)

    selector.select = counted_select
    transport = nc._transport
    read, writelines = transport.read, transport.writelines

    async def counted_read(n: int) -> Any:
        _IO["reads"] += 1
        return await read(n)

    def counted_writelines(data: Any) -> Any:
        _IO["writes"] += 1
        return writelines(data)

    transport.read, transport.writelines = counted_read, counted_writelines


def _counters() -> dict[str, float]:
    """This process's user and system seconds, loop iterations, socket reads/writes."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "utime": ru.ru_utime,
        "stime": ru.ru_stime,
        "syscr": _IO["reads"],
        "syscw": _IO["writes"],
        "vcsw": _IO["select"],
    }


ALL = ["raw", "sealed", "msgid", "occ", "occ1", "both", "storecfg", "store"]


async def main(events: int, rounds: int, variants: list[str], profile: str | None) -> None:
    tmp = scratch_dir("jetsource-attr-")
    server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    proc = server.start()
    server.wait_ready(proc, 30)
    nc = await nats.connect(server.address())
    js = nc.jetstream()
    _count_io(nc)
    pids = {"nats-server": proc.pid}
    aggregates, concurrency = 1000, 32
    ids = [f"story-{i:04d}" for i in range(aggregates)]
    per_writer = [ids[w::concurrency] for w in range(concurrency)]
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    extra: list[dict[str, float]] = [{}]

    # The store's bytes: unsealed (the bench's raw payload) and sealed.
    probe = JetStreamEventStore(
        nc, registry, EventStoreSettings(stream="ATTR_probe", subject_prefix="attrprobe.events")
    )
    await probe.ensure_streams()
    first = [NewEvent(typical_event(0))]
    enc = probe._encode("story-0000", first)
    unsealed = probe._messages("story-0000", first, enc, 0, 0)[0].data
    seals = await probe._seal(first, enc)
    sealed = probe._messages("story-0000", first, enc, 0, 0, seals)[0].data
    print(f"payload bytes: unsealed {len(unsealed)}, sealed {len(sealed)}")

    async def drive(cmds: list[list[Callable[[], Awaitable[None]]]], meter: CpuMeter) -> Any:
        async def writer(c: list[Callable[[], Awaitable[None]]]) -> None:
            for command in c:
                await command()

        before = _counters()
        meter.start()
        await asyncio.gather(*(writer(c) for c in cmds))
        rep = meter.stop(sum(len(c) for c in cmds))
        after = _counters()
        n = rep.operations
        extra[0] = {k: (after[k] - before[k]) / n for k in after}
        return rep

    async def one(variant: str, r: int) -> tuple[float, float, float]:
        tag = f"{variant}{r}"
        prefix = f"attr{tag}"
        if variant == "store":
            store = JetStreamEventStore(
                nc,
                registry,
                EventStoreSettings(stream=f"ATTR_{tag}", subject_prefix=f"{prefix}.events"),
            )
            await store.ensure_streams()
            versions = dict.fromkeys(ids, 0)
            counter = 0
            out = []
            for mine in per_writer:
                cmds: list[Callable[[], Awaitable[None]]] = []
                for i in range(events // concurrency):
                    agg = mine[i % len(mine)]

                    async def command(agg: str = agg) -> None:
                        nonlocal counter
                        batch = [NewEvent(typical_event(counter))]
                        counter += 1
                        result = await store.append(agg, batch, versions[agg])
                        versions[agg] = result.last_version

                    cmds.append(command)
                out.append(cmds)
            rep = await drive(out, CpuMeter(pids))
            await store.close()
        else:
            if variant == "storecfg":
                cfg = stream_config(
                    EventStoreSettings(stream=f"ATTR_{tag}", subject_prefix=f"{prefix}.events")
                )
                cfg["subjects"] = [f"{prefix}.>"]
                await probe._replies.request(
                    f"$JS.API.STREAM.CREATE.ATTR_{tag}",
                    __import__("json").dumps(cfg).encode(),
                    None,
                    5,
                )
            else:
                await js.add_stream(
                    name=f"ATTR_{tag}",
                    subjects=[f"{prefix}.>"],
                    storage="file",
                    compression="s2",
                    allow_direct=True,
                )
            payload = sealed if variant in ("sealed", "both") else unsealed
            last: dict[str, int] = dict.fromkeys(ids, 0)
            out = []
            for mine in per_writer:
                cmds = []
                for i in range(events // concurrency):
                    agg = mine[i % len(mine)]
                    subject = f"{prefix}.{agg}.DecisionAdded"
                    if variant in ("raw", "sealed", "storecfg"):

                        async def plain(subject: str = subject) -> None:
                            await js.publish(subject, payload)

                        cmds.append(plain)
                        continue
                    if variant == "msgid":
                        h = {"Nats-Msg-Id": uuid7()}

                        async def msgid(subject: str = subject, h: dict[str, str] = h) -> None:
                            await js.publish(subject, payload, headers=h)

                        cmds.append(msgid)
                        continue
                    mid = uuid7()
                    filt = f"{prefix}.{agg}.>"

                    async def pub(
                        subject: str = subject, agg: str = agg, mid: str = mid, filt: str = filt
                    ) -> None:
                        h = {"Nats-Expected-Last-Subject-Sequence": str(last[agg])}
                        if variant != "occ1":
                            h["Nats-Expected-Last-Subject-Sequence-Subject"] = filt
                        if variant == "both":
                            h = {"Nats-Msg-Id": mid, **h}
                        ack = await js.publish(subject, payload, headers=h)
                        last[agg] = ack.seq

                    cmds.append(pub)
                out.append(cmds)
            rep = await drive(out, CpuMeter(pids))
        per = rep.per_op_ms()
        rate = rep.operations / rep.wall
        return rate, per.get("client", float("nan")), per.get("nats-server", float("nan"))

    try:
        for r in range(rounds):
            order = variants if r % 2 == 0 else list(reversed(variants))
            for v in order:
                prof = cProfile.Profile() if (profile == v and r == rounds - 1) else None
                if prof:
                    prof.enable()
                res = await one(v, r)
                if prof:
                    prof.disable()
                    prof.dump_stats("bench-append.prof")
                results[v].append(res)
                x = extra[0]
                print(
                    f"round {r} {v:<9} {res[0]:>8,.0f} ev/s  client {res[1] * 1000:6.1f} us/ev"
                    f"  server {res[2] * 1000:6.1f} us/ev  client user {x['utime'] * 1e6:5.1f}"
                    f" sys {x['stime'] * 1e6:5.1f} us; reads/ev {x['syscr']:.3f}"
                    f" writes/ev {x['syscw']:.3f} loop iterations/ev {x['vcsw']:.3f}",
                    flush=True,
                )
            await asyncio.sleep(0.2)
        print("\nmedians over rounds (us per event; ratio = rate / raw's in the same round):")
        base = results.get("raw")
        for v in variants:
            rows = results[v]
            rate = statistics.median(x[0] for x in rows)
            cli = statistics.median(x[1] for x in rows) * 1000
            srv = statistics.median(x[2] for x in rows) * 1000
            ratio = (
                statistics.median(a[0] / b[0] for a, b in zip(rows, base, strict=True))
                if base
                else float("nan")
            )
            print(
                f"{v:<9} {rate:>8,.0f} ev/s  client {cli:6.1f}  server {srv:6.1f}  "
                f"sum {cli + srv:6.1f}  x raw {ratio:4.2f}"
            )
    finally:
        await probe.close()
        await nc.close()
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=32_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=",".join(ALL))
    p.add_argument("--profile", default=None)
    a = p.parse_args()
    asyncio.run(main(a.events, a.rounds, a.variants.split(","), a.profile))
