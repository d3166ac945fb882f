"""Process ledger under faults: kill -9 of the observer and of NATS during ingestion.

Writers record events (Record and RecordBatch, each event with its own id, a hot
process shared by every writer and processes of their own) and resend every
unacknowledged request with the same events until it is acknowledged. Meanwhile the
observer is killed with SIGKILL and restarted, then NATS (``sync_interval: always``,
production's durability) is killed with SIGKILL and restarted on its data. Then:

  acked lost     acknowledged events missing from the stream at their positions: 0
  doubled        event ids stored more than once: 0
  gaps           processes whose process_seq is not 1..n: 0
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import nats
import pytest

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.core.settings import EventStoreSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.devstack.services import GrpcService
from jetsource.domains.process.descriptor import DOMAIN
from jetsource.eventstore.jetstream import JetStreamEventStore

pytestmark = pytest.mark.chaos

RETRY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
}


def event(process_id: str, n: int) -> epb.CanonicalEvent:
    e = epb.CanonicalEvent(
        event_id=f"c-{uuid.uuid4().hex}", process_id=process_id, event_type="step"
    )
    e.data.update({"n": n})
    return e


class Load:
    def __init__(self, target: str, writers: int) -> None:
        self.target = target
        self.writers = writers
        self.sent = 0
        self.acked: dict[str, tuple[str, int, int]] = {}  # event id -> (process, gseq, pseq)
        self.retries = 0

    async def send(
        self, stub: pb_grpc.ObserverServiceStub, events: list[epb.CanonicalEvent]
    ) -> None:
        self.sent += len(events)
        while True:
            try:
                if len(events) == 1:
                    r = await stub.Record(pb.RecordRequest(event=events[0]), timeout=5)
                    positions = [r.position]
                else:
                    rb = await stub.RecordBatch(pb.RecordBatchRequest(events=events), timeout=10)
                    positions = list(rb.positions)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY:
                    raise
                self.retries += 1
                await asyncio.sleep(0.1 + random.random() * 0.2)
                continue
            for e, p in zip(events, positions, strict=True):
                assert p.event_id == e.event_id
                self.acked[e.event_id] = (e.process_id, p.global_seq, p.process_seq)
            return

    async def run(self, stop: asyncio.Event, tag: str) -> None:
        async def writer(w: int) -> None:
            async with grpc.aio.insecure_channel(self.target) as channel:
                stub = pb_grpc.ObserverServiceStub(channel)
                n = 0
                while not stop.is_set():
                    n += 1
                    if n % 3 == 0:
                        batch = [event(f"{tag}-w{w}-p{n % 5}", n) for _ in range(4)]
                        batch += [event(f"{tag}-hot", n), event(f"{tag}-w{w}-solo", n)]
                        await self.send(stub, batch)
                    else:
                        await self.send(
                            stub, [event(f"{tag}-hot" if n % 2 else f"{tag}-w{w}-solo", n)]
                        )

        await asyncio.gather(*(writer(w) for w in range(self.writers)))


async def test_kill_9_of_the_observer_and_of_nats_loses_and_doubles_nothing() -> None:
    home = Path(tempfile.mkdtemp(prefix="jetsource-process-chaos-"))
    nats_server = NatsServer(
        home / "nats", port=free_port(), monitor_port=free_port(), sync_interval="always"
    )
    nats_proc = nats_server.start()
    nats_server.wait_ready(nats_proc, 30)
    port = free_port()
    env = {
        **os.environ,
        "JETSOURCE_NATS__URL": nats_server.address(),
        "JETSOURCE_OBSERVER__GRPC_PORT": str(port),
        "JETSOURCE_OBSERVER__METRICS_PORT": "0",
        # The dead observer's pending claims are taken over after this long.
        "JETSOURCE_OBSERVER__CLAIM_LEASE_S": "3",
        "JETSOURCE_EVENTSTORE__REQUEST_TIMEOUT_S": "2",
    }
    observer = GrpcService(
        "observer", "jetsource.observer.server", home / "observer", "127.0.0.1", port, env=env
    )
    obs_proc = observer.start()
    observer.wait_ready(obs_proc, 60)
    load = Load(observer.address(), writers=6)
    stop = asyncio.Event()
    tag = uuid.uuid4().hex[:6]
    running = asyncio.create_task(load.run(stop, tag))
    try:
        await asyncio.sleep(2)
        # kill -9 the observer mid-ingestion, restart it
        obs_proc.kill()
        obs_proc.wait(10)
        acked_at_kill = len(load.acked)
        await asyncio.sleep(0.5)
        obs_proc = observer.start()
        await asyncio.to_thread(observer.wait_ready, obs_proc, 60)
        await asyncio.sleep(2)
        # kill -9 NATS mid-ingestion, restart it on its data
        nats_proc.kill()
        nats_proc.wait(10)
        await asyncio.sleep(1)
        nats_proc = nats_server.start()
        await asyncio.to_thread(nats_server.wait_ready, nats_proc, 60)
        await asyncio.sleep(3)
        stop.set()
        await asyncio.wait_for(running, 120)
        assert len(load.acked) > acked_at_kill > 0, "the load ran through both faults"

        nc = await nats.connect(nats_server.address())
        cfg = DOMAIN.eventstore(type("S", (), {"eventstore": EventStoreSettings()})())
        store = JetStreamEventStore(nc, DOMAIN.registry, cfg)
        stored = [r async for r in store.read_all()]
        await store.close()
        await nc.close()
    finally:
        stop.set()
        if not running.done():
            running.cancel()
        for p in (obs_proc, nats_proc):
            if p.poll() is None:
                p.kill()
                p.wait(10)

    ours = [r for r in stored if r.aggregate_id.startswith(tag)]
    by_id = Counter(r.event_id for r in ours)
    doubled = sorted(i for i, n in by_id.items() if n > 1)
    where = {r.event_id: (r.aggregate_id, r.stream_seq, r.version) for r in ours}
    lost = [i for i, pos in load.acked.items() if where.get(i) != pos]
    versions: dict[str, list[int]] = {}
    for r in ours:
        versions.setdefault(r.aggregate_id, []).append(r.version)
    gaps = [p for p, v in versions.items() if v != list(range(1, len(v) + 1))]
    print(
        f"\nprocess chaos: sent {load.sent}, acked {len(load.acked)}, stored {len(ours)}, "
        f"retries {load.retries}, acked lost {len(lost)}, doubled {len(doubled)}, "
        f"gaps {len(gaps)}, {time.strftime('%H:%M:%S')}"
    )
    assert not lost, lost[:5]
    assert not doubled, doubled[:5]
    assert not gaps, gaps[:5]
    # every stored event was sent (none invented); all sent were acked in the end
    assert len(ours) == len(load.acked)
