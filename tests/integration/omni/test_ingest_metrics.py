"""The ingress's request metrics, on the session's servers.

Every webhook answer is counted and timed, a 500 included: a handler that raises
unexpectedly is answered 500 (the JSON error shape, no traceback) and counted in
``jetsource_omni_webhooks_total{status="500"}`` and ``jetsource_omni_webhook_seconds``,
so the 5xx-ratio alert sees it (over real HTTP, uvicorn). OmniQueryService calls are
counted by method and outcome and timed as the other query services' are, and the REST
reads by route template, method and status."""

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


async def test_omni_query_rpcs_are_counted_by_method_and_outcome_and_timed(
    ingest: Ingest,
) -> None:
    """OmniQueryService exports what the other query services do: a counter by method
    and outcome (the gRPC code a failure is answered with) and a latency histogram."""
    import grpc

    from jetsource._gen.omni.v1 import query_pb2 as pb
    from jetsource._gen.omni.v1 import query_pb2_grpc

    def count(method: str, outcome: str) -> float:
        return _sample(
            "jetsource_omni_query_requests_total", {"method": method, "outcome": outcome}
        )

    def timed(method: str) -> float:
        return _sample("jetsource_omni_query_seconds_count", {"method": method})

    before = {
        "ok": count("ListIdentities", "ok"),
        "not_found": count("GetEvent", "not_found"),
        "invalid": count("ListRecentEvents", "invalid_argument"),
        "timed": timed("ListIdentities"),
    }
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        await stub.ListIdentities(pb.ListIdentitiesRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetEvent(pb.GetEventRequest(event_id="nope"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.ListRecentEvents(pb.ListRecentEventsRequest(page_size=100_000), timeout=5)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert count("ListIdentities", "ok") == before["ok"] + 1
    assert count("GetEvent", "not_found") == before["not_found"] + 1
    assert count("ListRecentEvents", "invalid_argument") == before["invalid"] + 1
    assert timed("ListIdentities") == before["timed"] + 1


async def test_rest_reads_are_counted_by_route_template_and_status_and_timed(
    http: httpx.AsyncClient,
) -> None:
    """Every /api/v1/ request (and the WhatsApp handshake) by route template, never
    the raw path (an id in a label would make a series per id); webhooks, health and
    /metrics are not counted here."""

    def count(route: str, method: str, status: str) -> float:
        labels = {"route": route, "method": method, "status": status}
        return _sample("jetsource_omni_api_requests_total", labels)

    def timed(route: str) -> float:
        return _sample("jetsource_omni_api_seconds_count", {"route": route, "method": "GET"})

    event = "/api/v1/events/{event_id}"
    before = {
        "ok": count("/api/v1/identities", "GET", "200"),
        "timed": timed("/api/v1/identities"),
        "missing": count(event, "GET", "404"),
        "invalid": count("/api/v1/events", "GET", "400"),
        "unmatched": count("(unmatched)", "GET", "404"),
        "handshake": count("/webhooks/whatsapp/{instance}", "GET", "403"),
    }
    assert (await http.get("/api/v1/identities")).status_code == 200
    assert (await http.get("/api/v1/events/some-id-nobody-has")).status_code == 404
    assert (await http.get("/api/v1/events", params={"type": "nope"})).status_code == 400
    assert (await http.get("/api/v1/no-such-route")).status_code == 404
    assert (await http.get("/webhooks/whatsapp/acme-cloud")).status_code == 403
    assert (await http.get("/healthz")).status_code == 200
    assert count("/api/v1/identities", "GET", "200") == before["ok"] + 1
    assert timed("/api/v1/identities") == before["timed"] + 1
    assert count(event, "GET", "404") == before["missing"] + 1
    assert count("/api/v1/events", "GET", "400") == before["invalid"] + 1
    assert count("(unmatched)", "GET", "404") == before["unmatched"] + 1
    assert count("/webhooks/whatsapp/{instance}", "GET", "403") == before["handshake"] + 1
    routes = {
        s.labels["route"]
        for m in REGISTRY.collect()
        if m.name == "jetsource_omni_api_requests"
        for s in m.samples
    }
    assert "/api/v1/events/some-id-nobody-has" not in routes
    assert "/healthz" not in routes and "/metrics" not in routes


async def test_a_rest_read_that_fails_unexpectedly_is_counted_500(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 5xx ratio of JetsourceOmniReadErrors sees a read that raised: the error
    handler answering 500 is outside the route, the count is of that answer."""
    from jetsource.domains.omni.reads import OmniReads

    async def boom(self: OmniReads, *args: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(OmniReads, "identities", boom)
    labels = {"route": "/api/v1/identities", "method": "GET", "status": "500"}
    before = _sample("jetsource_omni_api_requests_total", labels)
    transport = httpx.ASGITransport(app=ingest.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
        answer = await http.get("/api/v1/identities")
    assert answer.status_code == 500
    assert "secret" not in answer.text
    assert _sample("jetsource_omni_api_requests_total", labels) == before + 1
