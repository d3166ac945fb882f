"""The write paths of the process ledger (observer: Record, RecordBatch, RecordStream)
and of omni (webhooks) under NATS faults, together: nats-server paused (SIGSTOP 6 s),
killed (SIGKILL) and restarted on its data, then the claims bucket and the omni
events stream made to refuse (max_msgs reached, discard new) for 2 s. Writers resend
every failed request with the same ids. Checked:

- every failure is one a client retries: UNAVAILABLE or DEADLINE_EXCEEDED (gRPC), 503
  (HTTP), never INTERNAL/UNKNOWN/500; the refusals name the stream;
- every acknowledged event is stored, none twice;
- the observer's health is SERVING and the ingress's /healthz 200 again within
  ``RECOVER_S`` of each fault's end, on their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.api import DiscardPolicy

from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.core.settings import NatsSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.ingest.server import build as build_ingest
from jetsource.observer.server import SERVICE_NAME
from jetsource.observer.server import build as build_observer
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from tests.fixtures.omni import HERE
from tests.infra import Server, _embedded
from tests.integration.omni.harness import headers_for, omni_settings, route
from tests.integration.process_write.helpers import event

pytestmark = pytest.mark.chaos

RECOVER_S = 15.0  # nats-py's reconnect wait (2 s) + the write probe (10 s) + margin
RETRYABLE_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


class Writers:
    def __init__(self, observer_port: int, app: Any) -> None:
        self.observer_port, self.app = observer_port, app
        self.stop = asyncio.Event()
        self.acked: dict[str, str] = {}  # event id -> process id (observer)
        self.webhooks: dict[str, str] = {}  # wamid -> event id (omni)
        self.failures: Counter[str] = Counter()
        self.samples: dict[str, str] = {}

    def failed(self, code: str, details: str) -> None:
        self.failures[code] += 1
        self.samples.setdefault(code, details[:300])

    async def observer(self, w: int) -> None:
        pid = f"chaos-p{w}"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.observer_port}") as channel:
            stub = pb_grpc.ObserverServiceStub(channel)
            i = 0
            while not self.stop.is_set():
                ids = [f"w{w}-{i}-{j}" for j in range((1, 3, 20, 30)[i % 4])]
                while True:
                    try:
                        if i % 4 == 3:  # RecordStream

                            async def requests(ids: list[str] = ids) -> Any:
                                for x in ids:
                                    yield pb.RecordStreamRequest(event=event(pid, event_id=x))

                            positions = list(
                                (await stub.RecordStream(requests(), timeout=5)).positions
                            )
                        elif len(ids) == 1:
                            r = await stub.Record(
                                pb.RecordRequest(event=event(pid, event_id=ids[0])), timeout=5
                            )
                            positions = [r.position]
                        else:
                            req = pb.RecordBatchRequest(
                                events=[event(pid, event_id=x) for x in ids]
                            )
                            positions = list((await stub.RecordBatch(req, timeout=5)).positions)
                        for p in positions:
                            self.acked[p.event_id] = pid
                        break
                    except grpc.aio.AioRpcError as exc:
                        self.failed(exc.code().name, exc.details() or "")
                        await asyncio.sleep(0.2)
                i += 1

    async def ingest(self, c: int) -> None:
        text = (HERE / "whatsapp/cloud/text.json").read_text()
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://i", timeout=30) as http:
            i = 0
            while not self.stop.is_set():
                body: Any = json.loads(text.replace("16505551234", f"1650{c:03d}{i % 20:04d}"))
                wamid = f"wamid.chaos.{c}.{i}"
                body["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = wamid
                raw = json.dumps(body).encode()
                while True:
                    r = await http.post(
                        route("acme-cloud"), content=raw, headers=headers_for("acme-cloud", raw)
                    )
                    if r.status_code == 200:
                        self.webhooks[wamid] = r.json()["events"][0]["id"]
                        break
                    self.failed(f"http {r.status_code}", r.text)
                    await asyncio.sleep(0.2)
                i += 1


async def _until_healthy(observer_port: int, http: httpx.AsyncClient, since: float) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observer_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            assert time.monotonic() - since < RECOVER_S, "not healthy again on its own"
            try:
                status = (
                    await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2)
                ).status
                ok = (await http.get("/healthz")).status_code == 200
            except grpc.aio.AioRpcError:
                status, ok = 0, False
            if status == health_pb2.HealthCheckResponse.SERVING and ok:
                return time.monotonic() - since
            await asyncio.sleep(0.1)


async def _refuse(js: Any, stream: str, on: bool) -> None:
    info = await js.stream_info(stream)
    cfg = info.config
    cfg.max_msgs, cfg.discard = (info.state.messages if on else -1), DiscardPolicy.NEW
    await js.update_stream(cfg)


async def test_observer_and_webhooks_under_nats_pause_kill_and_refusals(tmp_path: Path) -> None:
    embedded = NatsServer(tmp_path / "nats", port=free_port(), monitor_port=free_port())
    running: list[Server] = [_embedded(embedded)]
    url = running[0].url
    observer = await build_observer(
        ObserverSettings(
            nats=NatsSettings(url=url), observer=ObserverOptions(grpc_port=0, metrics_port=0)
        )
    )
    isettings = omni_settings(url, f"redis://127.0.0.1:{free_port()}/0", "CHAOS")
    ingest = await build_ingest(isettings)
    load = Writers(observer.port, ingest.app)
    tasks = [asyncio.create_task(load.observer(w)) for w in range(4)]
    tasks += [asyncio.create_task(load.ingest(c)) for c in range(3)]
    recovered: dict[str, float] = {}
    transport = httpx.ASGITransport(app=ingest.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://i") as http:
            await asyncio.sleep(2)
            proc = running[0].proc
            assert proc is not None
            pid = proc.pid
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(6)
            os.kill(pid, signal.SIGCONT)
            recovered["pause 6s"] = await _until_healthy(observer.port, http, time.monotonic())
            await asyncio.sleep(2)

            os.kill(pid, signal.SIGKILL)
            proc.wait()
            running.pop()
            await asyncio.sleep(1)
            running.append(_embedded(embedded))
            recovered["kill -9"] = await _until_healthy(observer.port, http, time.monotonic())
            await asyncio.sleep(2)

            nc = await nats.connect(url)
            js = nc.jetstream()
            try:
                streams = ["KV_PROCESS_IDEMPOTENCY", isettings.omni.events_stream]
                for stream in streams:
                    await _refuse(js, stream, True)
                await asyncio.sleep(2)
                for stream in streams:
                    await _refuse(js, stream, False)
                recovered["refusals"] = await _until_healthy(observer.port, http, time.monotonic())
            finally:
                await nc.close()
            await asyncio.sleep(2)
            load.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)

        stored: Counter[str] = Counter()
        for pid_ in sorted(set(load.acked.values())):
            for e in await observer.store.read_aggregate(pid_):
                stored[e.envelope.event_id] += 1
        lost = [k for k in load.acked if stored[k] == 0]
        doubled = [k for k, n in stored.items() if n > 1]
        webhook_events: Counter[str] = Counter()
        for event_id in set(load.webhooks.values()):
            webhook_events[event_id] = len(await ingest.store.read_aggregate(event_id))
        print(
            f"\nobserver acked {len(load.acked)}, webhooks acked {len(load.webhooks)}; "
            f"failures {dict(load.failures)}; healthy again after {recovered}"
        )
        assert not lost and not doubled, (lost[:5], doubled[:5])
        assert all(n == 1 for n in webhook_events.values()), webhook_events.most_common(3)
        bad = {
            k: load.samples[k] for k in load.failures if k not in RETRYABLE_GRPC and k != "http 503"
        }
        assert not bad, bad
        refusals = [v for k, v in load.samples.items() if "10077" in v]
        assert load.failures, "no fault was seen by any writer"
        assert all(
            "KV_PROCESS_IDEMPOTENCY" in v or isettings.omni.events_stream in v for v in refusals
        )
    finally:
        load.stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ingest.stop(0)
        await observer.stop(0)
        for server in running:
            server.stop()
