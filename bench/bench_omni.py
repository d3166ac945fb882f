"""Omni ingest: webhooks through a running jetsource-ingest, the recent-events query over
many stored events, identity resolution cached and uncached, and storage over the raw
payloads.

Servers: nats-server and Valkey (embedded, a temp dir), jetsource-ingest as its own
process (uvicorn + gRPC), the omni read models projected by the projector as its own
process (started and ready before the clock).

1. Ingest: WhatsApp Cloud API text webhooks (signed, 1,000 senders, each a new message)
   sent open-loop at ``--rate`` per second for ``--seconds``; latency from the moment a
   webhook was due to its 200 (so queueing in an overloaded ingress counts).
2. Storage, right after 1: bytes on disk of OMNI_RAW + OMNI_EVENTS + the handle bucket,
   beside the bytes of the bodies received: now, and per webhook in the sealed (s2-
   compressed) blocks, the long-run figure the aim is judged on.
3. More events appended straight to the event store for ``--load-seconds`` (or up to
   ``--stored``), projected, then ListRecentEvents over gRPC (24 h, 50 per page): no
   filter, one filter, two filters; and an identity's timeline.
4. Identity resolution in process: cached, uncached (cache emptied: one KV get), first
   contact (identity events appended and the handle claimed).

    python -m bench.bench_omni                  500 webhooks/s for 60 s, up to 1,000,000 stored
    python -m bench.bench_omni --rate 100 --seconds 3 --stored 3000 --load-seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
from pydantic import SecretStr
from tests.projector_fixtures import start_projector

from bench.common import (
    Aim,
    CpuMeter,
    Stats,
    Table,
    beside_blocks,
    exit_on_signals,
    ms,
    scratch_dir,
    show,
    stop,
    stream_disk,
)
from jetsource._gen.omni.v1 import query_pb2 as pb
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource._gen.omni.v1.events_pb2 import (
    CONTENT_TYPE_TEXT,
    DIRECTION_INBOUND,
    EVENT_TYPE_MESSAGE,
    EVENT_TYPE_STATUS,
    NormalizedEvent,
)
from jetsource.core.clock import now_ns, to_timestamp
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.settings import NatsSettings, ValkeySettings
from jetsource.devstack.servers import NatsServer, ValkeyServer, free_port
from jetsource.domains.omni.descriptor import DOMAIN
from jetsource.domains.omni.events import stable_uuid
from jetsource.domains.omni.identity import IdentityService
from jetsource.domains.omni.normalize import event_id
from jetsource.domains.omni.settings import InstanceConfig, OmniOptions
from jetsource.domains.omni.signatures import sign
from jetsource.eventstore import jsapi
from jetsource.eventstore.bootstrap import connect
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.ingest.settings import IngestOptions, IngestSettings
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.settings import ProjectorOptions

SECRET = "bench-app-secret"
INSTANCE = "bench-cloud"
SENDERS = 1000


def webhook(i: int, sender: int, tag: str = "HBgLNDkxNzAwMDAwMDAwFQIAEhgU") -> bytes:
    """A signed-to-be WhatsApp Cloud text message; ``tag`` makes its wamid unique."""
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550783881",
                                    "phone_number_id": "106540352242922",
                                },
                                "contacts": [
                                    {
                                        "profile": {"name": f"Customer {sender}"},
                                        "wa_id": f"4917{sender:08d}",
                                    }
                                ],
                                "messages": [
                                    {
                                        "from": f"4917{sender:08d}",
                                        "id": f"wamid.{tag}{i:012d}AA==",
                                        "timestamp": str(int(time.time())),
                                        "type": "text",
                                        "text": {
                                            "body": f"Hello, is order {i} on its way? "
                                            "I ordered it last week and have not heard back."
                                        },
                                    }
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    ).encode()


def settings_for(nats_url: str, valkey_url: str) -> IngestSettings:
    return IngestSettings(
        nats=NatsSettings(url=nats_url),
        valkey=ValkeySettings(url=valkey_url),
        ingest=IngestOptions(
            http_port=free_port(),
            grpc_port=free_port(),
            instances={
                INSTANCE: InstanceConfig(
                    provider="whatsapp", format="cloud", app_secret=SecretStr(SECRET)
                )
            },
        ),
        omni=OmniOptions(),
        projector=ProjectorOptions(http_port=0, valkey_prefix="bench"),
    )


class Connection:
    """A kept-alive HTTP/1.1 connection with the least client CPU per request (httpx's
    pool costs more CPU per request than the ingress does, and grows with the queue)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-length: {len(body)}\r\n"
            f"{head}\r\n".encode()
            + body
        )
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status


async def ingest_phase(host: str, port: int, rate: float, seconds: float) -> tuple[Stats, int, int]:
    """Open loop: webhook i is due at i/rate; a pool of connections takes the next due one.
    Latency is counted from when it was due, so a backlog shows."""
    total = int(rate * seconds)
    latencies: list[float] = []
    failures = 0
    body_bytes = 0
    rng = random.Random(1)
    path = f"/webhooks/whatsapp/{INSTANCE}"
    bodies = [webhook(i, rng.randrange(SENDERS)) for i in range(total)]
    signed = [
        {"x-hub-signature-256": sign(SECRET, b), "content-type": "application/json"} for b in bodies
    ]
    connections = [Connection(host, port) for _ in range(64)]
    for w, c in enumerate(connections[:20]):  # warm up connections and the ingress
        b = webhook(10_000_000 + w, w)
        await c.post(path, b, {"x-hub-signature-256": sign(SECRET, b)})
    nxt = 0
    t0 = time.perf_counter()

    async def worker(c: Connection) -> None:
        nonlocal nxt, failures, body_bytes
        while nxt < total:
            i = nxt
            nxt += 1
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await c.post(path, bodies[i], signed[i])
            latencies.append(time.perf_counter() - due)
            body_bytes += len(bodies[i])
            if status != 200:
                failures += 1

    await asyncio.gather(*(worker(c) for c in connections))
    wall = time.perf_counter() - t0
    for c in connections:
        if c.writer is not None:
            c.writer.close()
    return Stats("webhook -> 200 (stored)", latencies, wall), failures, body_bytes


async def load_phase(settings: IngestSettings, limit: int, seconds: float) -> int:
    """Normalized events appended straight to the store (as the ingress does), many at once."""
    nc = await connect(settings)
    store = JetStreamEventStore(nc, DOMAIN.registry, DOMAIN.eventstore(settings))
    await store.start()
    deadline = time.monotonic() + seconds
    count = 0
    instances = ["bench-cloud", "bench-evo", "bench-bot", "shop-2"]

    async def writer(w: int) -> None:
        nonlocal count
        i = w
        while time.monotonic() < deadline and count < limit:
            count += 1
            provider = "discord" if i % 3 == 2 else "whatsapp"
            inst = instances[i % 4]
            pe = f"load-{i}"
            eid = event_id(provider, inst, pe)
            ev = NormalizedEvent(
                id=eid,
                provider=provider,
                provider_event_id=pe,
                event_type=EVENT_TYPE_STATUS if i % 5 == 0 else EVENT_TYPE_MESSAGE,
                direction=DIRECTION_INBOUND,
                sender_identity_id=f"idn-load{i % 5000}",
                sender_handle=f"4918{i % 5000:08d}",
                instance_name=inst,
                conversation_id=f"4918{i % 5000:08d}",
                content_type=CONTENT_TYPE_TEXT,
                content_text=f"load message {i}",
                raw_ref=f"raw-{i}",
                received_at=to_timestamp(now_ns()),
            )
            await store.append(
                eid, [NewEvent(ev, event_id=stable_uuid(eid, "received"))], NO_STREAM
            )
            i += 64

    await asyncio.gather(*(writer(w) for w in range(64)))
    await store.close()
    await nc.drain()
    return count


async def query_phase(grpc_target: str, n: int) -> list[Stats]:
    out = []
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        cases = {
            "recent, no filter": pb.ListRecentEventsRequest(page_size=50),
            "recent, instance": pb.ListRecentEventsRequest(instance="shop-2", page_size=50),
            "recent, instance + type": pb.ListRecentEventsRequest(
                instance="bench-evo", event_type=EVENT_TYPE_STATUS, page_size=50
            ),
        }
        for name, request in cases.items():
            for _ in range(20):
                await stub.ListRecentEvents(request, timeout=10)
            lat = []
            t0 = time.perf_counter()
            for _ in range(n):
                s = time.perf_counter()
                response = await stub.ListRecentEvents(request, timeout=10)
                lat.append(time.perf_counter() - s)
                assert len(response.events) == 50, (name, len(response.events))
            out.append(Stats(name, lat, time.perf_counter() - t0))
        lat = []
        t0 = time.perf_counter()
        for k in range(n):
            s = time.perf_counter()
            await stub.GetConversation(
                pb.GetConversationRequest(
                    provider="whatsapp",
                    instance="bench-cloud",
                    conversation_id=f"4918{(k * 12) % 5000:08d}",
                    page_size=50,
                ),
                timeout=10,
            )
            lat.append(time.perf_counter() - s)
        out.append(Stats("conversation", lat, time.perf_counter() - t0))
    return out


async def identity_phase(settings: IngestSettings, n: int) -> list[Stats]:
    nc = await connect(settings)
    store = JetStreamEventStore(nc, DOMAIN.registry, DOMAIN.eventstore(settings))
    service = IdentityService(nc, store, settings.omni)
    # The bucket's cache, not the settling of links from the stream (a start replays
    # every link and merge in the background, which would be timed with the reads).
    await service.start(follow=False)
    out = []
    try:
        known = [(f"4917{s:08d}") for s in range(min(SENDERS, n))]
        for h in known:
            await service.resolve("whatsapp", h, INSTANCE)
        lat = []
        t0 = time.perf_counter()
        for k in range(n * 10):
            s = time.perf_counter()
            await service.resolve("whatsapp", known[k % len(known)], INSTANCE)
            lat.append(time.perf_counter() - s)
        out.append(Stats("cached", lat, time.perf_counter() - t0))
        lat = []
        t0 = time.perf_counter()
        for k in range(n):
            service.forget()
            s = time.perf_counter()
            await service.resolve("whatsapp", known[k % len(known)], INSTANCE)
            lat.append(time.perf_counter() - s)
        out.append(Stats("uncached (known handle: one KV get)", lat, time.perf_counter() - t0))
        lat = []
        t0 = time.perf_counter()
        for k in range(n):
            s = time.perf_counter()
            await service.resolve("discord", f"9{k:017d}", "bench-bot", {"display_name": f"u{k}"})
            lat.append(time.perf_counter() - s)
        out.append(
            Stats("uncached, first contact (events + KV create)", lat, time.perf_counter() - t0)
        )
    finally:
        await service.close()
        await store.close()
        await nc.drain()
    return out


QUICK = [
    "--rate",
    "100",
    "--seconds",
    "1",
    "--stored",
    "1000",
    "--load-seconds",
    "3",
    "--queries",
    "50",
    "--resolves",
    "100",
]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="webhooks per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--stored", type=int, default=1_000_000, help="most events to store")
    parser.add_argument("--load-seconds", type=float, default=180.0, help="time to store them")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--resolves", type=int, default=2000)
    args = parser.parse_args(argv)
    return show(asyncio.run(run(args)))


def start_ingress(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "jetsource.ingest.server"], env=env, stdout=log, stderr=log
    )


async def run(args: argparse.Namespace) -> list[Table]:
    tmp = scratch_dir("jetsource-bench-omni-")
    nats_server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    valkey_server = ValkeyServer(tmp / "valkey", port=free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for server in (nats_server, valkey_server):
            proc = server.start()
            procs.append(proc)
            server.wait_ready(proc, 30)
        settings = settings_for(nats_server.address(), f"redis://127.0.0.1:{valkey_server.port}/0")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
        env.update(
            {
                "JETSOURCE_NATS__URL": nats_server.address(),
                "JETSOURCE_VALKEY__URL": f"redis://127.0.0.1:{valkey_server.port}/0",
                "JETSOURCE_INGEST__HTTP_PORT": str(settings.ingest.http_port),
                "JETSOURCE_INGEST__GRPC_PORT": str(settings.ingest.grpc_port),
                "JETSOURCE_INGEST__INSTANCES": json.dumps(
                    {INSTANCE: {"provider": "whatsapp", "format": "cloud", "app_secret": SECRET}}
                ),
                "JETSOURCE_PROJECTOR__VALKEY_PREFIX": "bench",
                "JETSOURCE_LOG_LEVEL": "WARNING",
            }
        )
        ingress = start_ingress(env, tmp / "ingest.log")
        procs.append(ingress)
        url = f"http://127.0.0.1:{settings.ingest.http_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                async with httpx.AsyncClient() as probe:
                    if (await probe.get(f"{url}/healthz", timeout=1)).status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or ingress.poll() is not None:
                raise RuntimeError((tmp / "ingest.log").read_text()[-2000:])
            await asyncio.sleep(0.2)

        # The projector as its own process, as deployed: run in this process, every batch
        # it applied stalled the bench's clients (their webhooks sent late, timed from when
        # they were due), and its CPU was booked as the client's.
        # Started and ready (its /healthz answers 200 once every worker runs) before the
        # clock, as the ingress is: its start-up is not the ingest row's.
        p = await open_projection(settings, domains=DomainRegistry([DOMAIN]))
        projector_port = free_port()
        projector = start_projector(
            {
                **env,
                "JETSOURCE_PROJECTOR__HTTP_PORT": str(projector_port),
                "JETSOURCE_PROJECTOR__MODELS": json.dumps(p.default_models()),
            },
            tmp / "projector.log",
        )
        procs.append(projector)

        def projector_alive() -> None:
            if projector.poll() is not None:
                raise RuntimeError(
                    f"the projector exited ({projector.returncode}):\n"
                    + (tmp / "projector.log").read_text()[-2000:]
                )

        deadline = time.monotonic() + 60
        while True:
            projector_alive()
            try:
                async with httpx.AsyncClient() as probe:
                    health = await probe.get(
                        f"http://127.0.0.1:{projector_port}/healthz", timeout=1
                    )
                    if health.status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the projector was not ready in 60 s:\n"
                    + (tmp / "projector.log").read_text()[-2000:]
                )
            await asyncio.sleep(0.2)
        try:
            meter = CpuMeter(
                {
                    "jetsource-ingest": ingress.pid,
                    "projector": projector.pid,
                    "nats-server": procs[0].pid,
                }
            ).start()
            ingest, failures, body_bytes = await ingest_phase(
                "127.0.0.1", settings.ingest.http_port, args.rate, args.seconds
            )
            ingest.cpu = meter.stop(ingest.count)
            names = ["OMNI_RAW", "OMNI_EVENTS", f"KV_{settings.omni.identity_bucket}"]
            await asyncio.sleep(1.0)
            disk = {}
            for name in names:
                state = (
                    await jsapi.api(p.stores["omni"]._replies, f"STREAM.INFO.{name}", {}, 5.0)
                )["state"]
                disk[name] = stream_disk(
                    tmp / "nats", name, int(state["messages"]), int(state["bytes"])
                )

            stored = await load_phase(settings, args.stored, args.load_seconds)
            store = p.stores["omni"]
            total_events = int((await store.stream_info())["state"]["messages"])
            caught = time.monotonic()
            while True:
                left = 0
                for m in p.model_names():
                    info = await jsapi.consumer_info(
                        store._replies, store.settings.stream, p.spec(m, 1).durable, 5.0
                    )
                    left += (
                        1
                        if info is None
                        else (int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0)))
                    )
                if not left:
                    break
                projector_alive()
                if time.monotonic() - caught > 600:
                    raise RuntimeError(f"the projector left {left} events unapplied after 600 s")
                await asyncio.sleep(0.5)
            projected_in = time.monotonic() - caught
            queries = await query_phase(f"127.0.0.1:{settings.ingest.grpc_port}", args.queries)
            identities = await identity_phase(settings, args.resolves)
            final_messages = {}
            for name in names:
                info = await jsapi.api(p.stores["omni"]._replies, f"STREAM.INFO.{name}", {}, 5.0)
                final_messages[name] = int(info["state"]["messages"])
        finally:
            await p.close()
    finally:
        for proc in reversed(procs):
            stop(proc)
    # The index beside the blocks keeps state per subject (each webhook's raw payload and
    # event have subjects of their own); the server writes it in full when it stops.
    for name, d in disk.items():
        d.beside_per_message = beside_blocks(tmp / "nats", name) / max(1, final_messages[name])

    ingest_table = Table(
        f"Omni ingest: WhatsApp Cloud webhooks at {args.rate:,.0f}/s for {args.seconds:g} s "
        "through jetsource-ingest (HTTP, signed, 1 event each)",
        ["row", "rate", "latency (due -> 200)", "CPU per webhook"],
    )
    ingest_table.row(
        [
            ingest.name,
            f"{ingest.rate:,.0f}/s",
            ingest.latency(),
            ingest.cpu.cells() if ingest.cpu else "",
        ],
        [
            Aim.at_most("p99 < 10 ms", ingest.p99, 10.0),
            Aim.at_most("(users' target p99 < 50 ms)", ingest.p99, 50.0),
        ],
    )
    if failures:
        ingest_table.note(f"{failures} webhooks were not answered 200.")
    n = max(1, ingest.count)
    storage = Table(
        "Omni storage on disk after the ingest run, beside the bodies received",
        ["what", "bytes on disk now", "per webhook now", "per webhook in sealed blocks"],
    )
    storage.row(["bodies received", f"{body_bytes:,}", f"{body_bytes / n:,.0f}", ""])
    long_run = 0.0
    sealed_all = True
    for name, d in disk.items():
        per = d.per_message_sealed
        if name.startswith("KV_"):
            # One entry per sender, not per webhook: counted as it is now.
            long_run += d.now / n
            cell = "(per sender: as now)"
        elif per is None:
            sealed_all = False
            cell = "n/a (no block sealed yet)"
        else:
            long_run += per * d.messages / n
            cell = f"{per * d.messages / n:,.0f} ({per:,.0f} per message)"
        storage.row([name, f"{d.now:,}", f"{d.now / n:,.0f}", cell])
    total_now = sum(d.now for d in disk.values())
    over_now = (total_now - body_bytes) / body_bytes if body_bytes else float("nan")
    if sealed_all and body_bytes:
        over = long_run * n / body_bytes - 1
        storage.row(
            ["all three over the bodies", f"{total_now:,}", f"{over_now:+.0%}", f"{over:+.0%}"],
            [Aim.at_most("overhead < 20% (per webhook, sealed blocks)", over, 0.20)],
        )
    else:
        storage.row(
            ["all three over the bodies", f"{total_now:,}", f"{over_now:+.0%}", "n/a"],
            [Aim.at_most("overhead < 20% (now: no block sealed yet)", over_now, 0.20)],
        )
    raw = disk["OMNI_RAW"]
    storage.note(
        f"OMNI_RAW holds each body with its headers and verdict (the provider's proof); "
        f"now {raw.now / max(1, body_bytes):.2f}x the bodies. The streams are s2-compressed "
        "by nats-server block by block, when a block is sealed (full: 8 MB for a stream "
        "without limits); the newest block of each stream is still plain right after a run, "
        "a constant of up to 8 MB per stream, not a cost per webhook. The aim is judged per "
        "webhook in the sealed blocks plus each message's share of the stream's index "
        "(state per subject, measured after the server stopped): what each webhook costs in "
        "the long run. The handle bucket, one entry per sender, counts as it is now."
    )
    query_table = Table(
        f"Omni reads over gRPC from the read models: {total_events:,} events stored "
        f"({stored:,} appended in {args.load_seconds:g} s at most, projected "
        f"{projected_in:.0f} s later), 50 per page",
        ["query", "latency"],
    )
    for q in queries:
        query_table.row(
            [q.name, q.latency()],
            [Aim.at_most("p99 < 10 ms", q.p99, 10.0)] if q.name.startswith("recent") else [],
        )
    identity_table = Table(
        "Omni identity resolution in process (IdentityService.resolve)", ["row", "latency"]
    )
    for s in identities:
        aim = (
            [Aim.at_most("p99 < 1 ms", s.p99, 1.0)]
            if s.name == "cached"
            else [Aim.at_most("p99 < 5 ms", s.p99, 5.0)]
        )
        identity_table.row([s.name, s.latency()], aim)
    identity_table.note(f"cached p50 {ms(identities[0].p50)}")
    return [ingest_table, storage, query_table, identity_table]


if __name__ == "__main__":
    main(sys.argv[1:])
