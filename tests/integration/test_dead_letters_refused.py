"""The dead-letter stream refusing to file an event (full at its limit with discard new,
a full JetStream store, deleted) is a store outage the projector names, not a crash.

Before the fix the refusal (``JsApiError('JetStream error 503/10023: insufficient
resources')`` on a server at ``max_file_store``) ended the model's worker; the host
started it again, the poison came back only after its ack wait (30 s by default) and
ended it again, and /healthz said 200 "ok" all along. Now the worker keeps running, the
event waits for redelivery unacked, /healthz is 503 naming the dead-letter stream within
``store_outage_after_s``, and once the stream takes writes the event is filed, once, and
/healthz is 200 again on its own.

A server-wide ``max_file_store`` would refuse the events too; a limit of the dead-letter
stream alone (``max_bytes`` with discard new: err_code 10077) stands in for it here.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.servers import free_port
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService, http_server
from tests.projector_fixtures import projector_settings, seed

pytestmark = pytest.mark.integration


async def healthz(port: int) -> httpx.Response:
    return await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/healthz", timeout=2.0)


async def until_health(port: int, status: int, within: float) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        reply = await healthz(port)
        if reply.status_code == status:
            return reply
        assert time.monotonic() < deadline, (reply.status_code, reply.text)
        await asyncio.sleep(0.1)


async def test_a_dead_letter_stream_that_refuses_is_named_and_filed_once_after(
    settings: JetsourceSettings, unique: str
) -> None:
    ps = projector_settings(
        settings,
        unique,
        models=["context"],
        max_deliver=2,
        store_outage_after_s=0.3,
        control_poll_s=0.2,
    )
    p = await open_projection(ps)
    service = ProjectorService(p)
    port = free_port()
    health = http_server(service, "127.0.0.1", port)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    dlq = ps.projector.dlq_stream
    replies = p.store._replies
    try:
        await seed(p.store, ["ok-1"], 3)
        await until_health(port, 200, 30.0)
        info = await jsapi.api(replies, f"STREAM.INFO.{dlq}", {}, 5.0)
        config = info["config"]
        await jsapi.api(replies, f"STREAM.UPDATE.{dlq}", {**config, "max_bytes": 1}, 5.0)

        prefix = ps.eventstore.subject_prefix
        poison = OutMessage(f"{prefix}.bad-1.ContextCreated", b"\xff not an envelope", {})
        await jsapi.publish(replies, poison, 5.0)

        reply = await until_health(port, 503, 10.0)
        assert f"dead-letter stream {dlq} refuses writes" in reply.text, reply.text
        assert "context v1" in reply.text and "err_code 10077" in reply.text, reply.text
        workers = list(service.workers.values())
        assert workers and not any(task.done() for _, task in workers), "a worker ended"
        assert not await admin.dlq_list(p)

        await jsapi.api(replies, f"STREAM.UPDATE.{dlq}", {**config, "max_bytes": -1}, 5.0)
        reply = await until_health(port, 200, 10.0)
        letters = await admin.dlq_list(p)
        assert len(letters) == 1, letters
        # Filed once: later redeliveries (none should come) change nothing.
        await asyncio.sleep(0.5)
        assert len(await admin.dlq_list(p)) == 1
        assert (await healthz(port)).status_code == 200
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        health.close()
        await p.model("context", 1).drop()
        await p.close()
