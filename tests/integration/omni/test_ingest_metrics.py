"""Every webhook answer is counted and timed, a 500 included: a handler that raises
unexpectedly is answered 500 (the JSON error shape, no traceback) and counted in
``jetsource_omni_webhooks_total{status="500"}`` and ``jetsource_omni_webhook_seconds``,
so the 5xx-ratio alert sees it. Over real HTTP (uvicorn) on the session's servers."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import REGISTRY

from jetsource.domains.omni.intake import Intake
from jetsource.ingest.server import Ingest
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_webhook_answered_500_is_counted_and_timed(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(self: Intake, request: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Intake, "handle", boom)
    await ingest.start_http("127.0.0.1", 0)
    counted = {"provider": "whatsapp", "instance": "acme-cloud", "status": "500"}
    timed = {"provider": "whatsapp"}
    count_before = _sample("jetsource_omni_webhooks_total", counted)
    timed_before = _sample("jetsource_omni_webhook_seconds_count", timed)

    body = json.dumps({"object": "whatsapp_business_account", "entry": []}).encode()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest.http_port}") as client:
        response = await client.post(
            route("acme-cloud"), content=body, headers=headers_for("acme-cloud", body)
        )
    assert response.status_code == 500, response.text
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error; it was logged"}
    }
    assert "secret internals" in caplog.text, "logged with its traceback"
    assert _sample("jetsource_omni_webhooks_total", counted) == count_before + 1
    assert _sample("jetsource_omni_webhook_seconds_count", timed) == timed_before + 1
