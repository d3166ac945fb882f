"""/healthz follows whether webhooks can be stored, not only whether NATS is connected:
with the omni events stream refusing writes (here at its max_msgs with discard new;
sealed, or NATS hung, likewise) every webhook was answered 503 while /healthz said 200
``"webhooks": true``, so the pod stayed in its Service. Now a webhook answered 503, or
the write probe (every 10 s while writable), makes it 503 ``"webhooks": false``, and
it is 200 again on its own within seconds of the stream taking writes (the probe runs
every second meanwhile)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import DiscardPolicy

from jetsource.core.writehealth import PROBE_RETRY_S
from jetsource.ingest.settings import IngestSettings
from tests.fixtures.omni import HERE
from tests.infra import Server
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration


def _body(tag: str) -> bytes:
    body: Any = json.loads((HERE / "whatsapp/cloud/text.json").read_bytes())
    body["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = f"wamid.{tag}"
    return json.dumps(body).encode()


async def _post(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    h = headers_for("acme-cloud", body)
    return await http.post(route("acme-cloud"), content=body, headers=h)


async def test_healthz_is_503_while_the_events_stream_refuses_and_200_again_on_its_own(
    nats_server: Server, isettings: IngestSettings, http: httpx.AsyncClient, unique: str
) -> None:
    assert (await _post(http, _body(f"{unique}-0"))).status_code == 200
    assert (await http.get("/healthz")).json()["webhooks"] is True
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        info = await js.stream_info(isettings.omni.events_stream)
        cfg = info.config
        cfg.max_msgs, cfg.discard = info.state.messages, DiscardPolicy.NEW
        await js.update_stream(cfg)
        body = _body(f"{unique}-1")
        assert (await _post(http, body)).status_code == 503
        down = await http.get("/healthz")
        assert down.status_code == 503, down.text
        assert down.json()["webhooks"] is False and down.json()["nats"] is True
        await asyncio.sleep(PROBE_RETRY_S + 0.5)  # the probe sees the stream still full
        assert (await http.get("/healthz")).status_code == 503

        cfg.max_msgs = -1
        await js.update_stream(cfg)
        started = time.monotonic()
        while (up := await http.get("/healthz")).status_code != 200:
            assert time.monotonic() - started < PROBE_RETRY_S + 4, up.text
            await asyncio.sleep(0.1)
        assert up.json()["webhooks"] is True
        first, again = await _post(http, body), await _post(http, body)
        assert [e["stored"] for e in first.json()["events"]] == [True]
        assert [e["stored"] for e in again.json()["events"]] == [False]
    finally:
        await nc.close()


async def test_a_503_of_the_raw_archive_does_not_mark_the_events_stream(
    nats_server: Server, isettings: IngestSettings, http: httpx.AsyncClient, unique: str
) -> None:
    """A webhook answered 503 because the raw archive stream is full (or the handles
    bucket is gone: streams the write probe never looks at) marked the events stream not
    writable: /healthz (readiness) went 503 until the probe, finding the events stream
    fine, put it back, and again at the next such 503. Only the events stream's own 503
    marks it now."""
    assert (await _post(http, _body(f"{unique}-0"))).status_code == 200
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        info = await js.stream_info(isettings.omni.raw_stream)
        cfg = info.config
        cfg.max_msgs, cfg.discard = info.state.messages, DiscardPolicy.NEW
        await js.update_stream(cfg)
        refused = await _post(http, _body(f"{unique}-1"))
        assert refused.status_code == 503, refused.text
        assert isettings.omni.raw_stream in refused.text
        health = await http.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["webhooks"] is True
        cfg.max_msgs = -1
        await js.update_stream(cfg)
    finally:
        await nc.close()
