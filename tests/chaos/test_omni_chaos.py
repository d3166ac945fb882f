"""Omni ingress under faults (`make chaos`): kill -9 of jetsource-ingest and of
nats-server during a webhook burst. Clients retry until they get 200, as providers do;
afterwards every webhook that got 200 is stored exactly once (and none is stored that
was never sent)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from google.protobuf.message import Message

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.core.codec import UnknownEvent
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.domains.omni.events import EVENT_RECEIVED
from jetsource.eventstore.bootstrap import connect
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.infra import Server, start_nats
from tests.integration.omni.harness import IngressProcess, headers_for, omni_settings, route

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

WEBHOOKS = 1500
CLIENTS = 24


def provider_event_id(event: Message | UnknownEvent) -> str:
    """An EventReceived's provider event id: its event decodes as a NormalizedEvent."""
    assert isinstance(event, NormalizedEvent), event
    return event.provider_event_id


def webhook(i: int) -> bytes:
    """A WhatsApp Cloud API text message with its own wamid."""
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
                                        "profile": {"name": f"P{i % 50}"},
                                        "wa_id": f"4917{i % 50:08d}",
                                    }
                                ],
                                "messages": [
                                    {
                                        "from": f"4917{i % 50:08d}",
                                        "id": f"wamid.chaos{i:06d}",
                                        "timestamp": "1796047200",
                                        "type": "text",
                                        "text": {"body": f"message {i}"},
                                    }
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    ).encode()


def kill9_nats(server: Server) -> None:
    assert server.proc is not None and server.embedded is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)


def start_again(server: Server) -> None:
    assert server.embedded is not None
    server.proc = server.embedded.start()
    server.embedded.wait_ready(server.proc, 60)


async def test_kill9_of_ingress_and_nats_during_a_burst_loses_and_doubles_nothing(
    valkey_server: Server, tmp_path: Path, unique: str
) -> None:
    nats = start_nats(tmp_path / "nats")
    settings = omni_settings(nats.url, valkey_server.url, unique)
    settings = settings.model_copy(
        update={"eventstore": settings.eventstore.model_copy(update={"retry_attempts": 3})}
    )
    ingress = IngressProcess(settings, tmp_path / "ingest")
    ingress.start()
    ok: dict[int, int] = {}  # webhook -> attempts until its 200
    faults: list[str] = []
    try:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(WEBHOOKS):
            queue.put_nowait(i)
        path = route("acme-cloud")

        async def client() -> None:
            async with httpx.AsyncClient(base_url=ingress.url, timeout=10) as http:
                while not queue.empty():
                    i = queue.get_nowait()
                    body = webhook(i)
                    attempts = 0
                    while True:
                        attempts += 1
                        try:
                            r = await http.post(
                                path, content=body, headers=headers_for("acme-cloud", body)
                            )
                            if r.status_code == 200:
                                ok[i] = attempts
                                break
                            assert r.status_code == 503, r.text  # only "try again" is allowed
                        except httpx.TransportError:
                            pass  # the ingress is down: a provider retries later
                        await asyncio.sleep(0.1)

        async def chaos() -> None:
            await asyncio.sleep(1.0)
            for _ in range(2):
                ingress.kill(signal.SIGKILL)
                faults.append("kill -9 ingest")
                await asyncio.sleep(0.3)
                await asyncio.to_thread(ingress.start)
                await asyncio.sleep(1.0)
                kill9_nats(nats)
                faults.append("kill -9 nats")
                await asyncio.sleep(1.0)
                await asyncio.to_thread(start_again, nats)
                await asyncio.sleep(1.0)

        started = time.monotonic()
        await asyncio.gather(chaos(), *(client() for _ in range(CLIENTS)))
        elapsed = time.monotonic() - started

        assert len(ok) == WEBHOOKS
        nc = await connect(settings)
        try:
            domain = omni_domain(settings.omni)
            store = JetStreamEventStore(nc, domain.registry, domain.eventstore(settings))
            counts = Counter(
                [
                    provider_event_id(r.event)
                    async for r in store.read_all()
                    if r.event_type == EVENT_RECEIVED
                ]
            )
            await store.close()
        finally:
            await nc.drain()
        sent = {f"wamid.chaos{i:06d}" for i in ok}
        assert set(counts) == sent, "an answered webhook is missing, or one never sent is stored"
        doubled = {k: n for k, n in counts.items() if n != 1}
        assert not doubled, doubled
        retried = sum(1 for n in ok.values() if n > 1)
        print(
            f"\nomni chaos: {WEBHOOKS} webhooks, {CLIENTS} clients, faults {faults}, "
            f"{retried} retried by clients, all 200 after {elapsed:.1f} s; each stored once"
        )
        assert faults.count("kill -9 nats") == 2 and retried > 0
    finally:
        ingress.stop()
        nats.stop()
