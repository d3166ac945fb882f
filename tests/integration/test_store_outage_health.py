"""The projector's /healthz says within seconds that a model's store refuses its writes,
naming the model and the store, and is 200 again on its own once the store writes.

Valkey at ``maxmemory`` with ``noeviction`` answers OOM to every write while PING still
answers: the reachability probe (#18) sees nothing, and the worker leaves the events to
redelivery (a store outage, not poison). Before the fix /healthz stayed 200 until the
120 s stall rule. The test runs its own Valkey (CONFIG SET would hit the session's) and
restores ``maxmemory`` whatever happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from valkey.asyncio import Valkey

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings, ValkeySettings
from jetsource.devstack.servers import free_port
from jetsource.domains.context.samples import story_events
from jetsource.projection import admin
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService, http_server
from tests.infra import start_valkey
from tests.projector_fixtures import projector_settings, seed, story_ids

pytestmark = pytest.mark.integration

# store_outage_after_s (3 s by default) plus a redelivery round and a slow machine.
SAYS_WITHIN_S = 10.0
RECOVERS_WITHIN_S = 20.0


async def healthz(port: int, path: str = "/healthz") -> httpx.Response:
    return await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}{path}", timeout=2.0)


async def until(port: int, ok: Callable[[httpx.Response], bool], within: float) -> float:
    started = time.monotonic()
    while True:
        reply = await healthz(port)
        if ok(reply):
            return time.monotonic() - started
        assert time.monotonic() - started < within, (reply.status_code, reply.text)
        await asyncio.sleep(0.2)


async def test_healthz_names_a_store_refusing_writes_and_recovers(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> None:
    server = start_valkey(tmp_path)
    r = Valkey.from_url(server.url)
    private = settings.model_copy(update={"valkey": ValkeySettings(url=server.url)})
    p = await open_projection(projector_settings(private, unique, models=["context"]))
    service = ProjectorService(p)

    port = free_port()
    health = http_server(service, "127.0.0.1", port)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    try:
        stories = story_ids(3)
        await seed(p.store, stories, 10)
        await until(port, lambda a: a.status_code == 200, 30.0)
        model = p.model("context", 1)

        async def applied() -> int:
            return (await model.checkpoint()).applied

        deadline = time.monotonic() + 30
        while await applied() < 30:
            assert time.monotonic() < deadline, await applied()
            await asyncio.sleep(0.2)

        # Below what Valkey uses already: every write is refused (OOM) for as long as
        # it lasts, PING and reads still answer.
        await r.config_set("maxmemory-policy", "noeviction")
        await r.config_set("maxmemory", 1)
        extra = story_events(stories[0], 14, 0)
        for i in range(10, 14):
            await p.store.append(stories[0], [NewEvent(extra[i])], i)

        took = await until(port, lambda a: a.status_code == 503, SAYS_WITHIN_S)
        reply = await healthz(port)
        assert reply.status_code == 503, reply.text
        assert "context v1" in reply.text and "valkey refuses writes" in reply.text, reply.text
        assert "OutOfMemoryError" in reply.text and "maxmemory" in reply.text, reply.text
        assert took < SAYS_WITHIN_S
        # Liveness (the chart's livenessProbe) stays 200: a restart cures no store outage.
        live = await healthz(port, "/livez")
        assert live.status_code == 200, live.text

        await r.config_set("maxmemory", 0)
        await until(port, lambda a: a.status_code == 200, RECOVERS_WITHIN_S)
        deadline = time.monotonic() + 30
        while await applied() < 34:
            assert time.monotonic() < deadline, await applied()
            await asyncio.sleep(0.2)
        assert not await admin.dlq_list(p), "an OOM refusal filed dead letters"
        assert (await healthz(port)).status_code == 200
    finally:
        await r.config_set("maxmemory", 0)
        stop.set()
        await asyncio.wait_for(running, 30)
        health.close()
        await p.model("context", 1).drop()
        await p.close()
        await r.aclose()
        server.stop()
