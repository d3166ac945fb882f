"""A REST read (/api/v1/) given a query parameter it does not take: 400 naming it and
listing those it takes (it was ignored: ``/api/v1/events?event_type=...`` answered
every event, unfiltered). The webhooks keep taking parameters we do not know."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from jetsource.ingest.server import Ingest
from tests.integration.omni.harness import VERIFY_TOKEN, headers_for, route

pytestmark = pytest.mark.integration

RAW = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
async def api(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=ingest.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield client


READS = {
    "/api/v1/events": "instance, provider, type, direction, since, page_size, page_token",
    "/api/v1/events/ev-1": "include_raw",
    "/api/v1/raw/raw-1": "none",
    "/api/v1/conversations/whatsapp/acme-cloud/1": "page_size, page_token",
    "/api/v1/identities": "provider, include_merged, page_size, page_token",
    "/api/v1/identities/idn-1": "page_size, page_token",
    "/api/v1/identities/idn-1/timeline": "page_size, page_token",
    "/api/v1/handles/whatsapp/1": "none",
}


async def test_a_rest_read_given_an_unknown_parameter_is_400_naming_it(
    api: httpx.AsyncClient,
) -> None:
    """``?event_type=message`` on /api/v1/events (the filter is ``type``) answered
    every event, unfiltered: every read now refuses a parameter it does not take."""
    response = await api.get("/api/v1/events", params={"event_type": "message"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "event_type", error
    assert "type, direction" in error["message"], error
    wrong = []
    for path, takes in READS.items():
        response = await api.get(path, params={"bogus": "1"})
        error = response.json().get("error", {})
        if (
            response.status_code != 400
            or error.get("field") != "bogus"
            or f"(it takes: {takes})" not in error.get("message", "")
        ):
            wrong.append((path, response.status_code, response.text[:300]))
    # A name holding a control character is named escaped.
    response = await api.get("/api/v1/events?a%1b%5b2J=1")
    if response.status_code != 400 or RAW.search(response.text):
        wrong.append(("escaped name", response.status_code, response.text))
    assert response.json()["error"]["field"] == "a\\x1b[2J"
    assert not wrong, "\n".join(map(str, wrong))
    # The parameters a read takes are still taken.
    ok = await api.get("/api/v1/events", params={"type": "message", "page_size": "5"})
    assert ok.status_code == 200, ok.text
    ok = await api.get("/api/v1/identities", params={"include_merged": "true"})
    assert ok.status_code == 200, ok.text


async def test_webhooks_keep_taking_parameters_we_do_not_know(api: httpx.AsyncClient) -> None:
    """A provider may add parameters: the handshake and a delivery with one unknown to
    us are answered as before."""
    response = await api.get(
        route("acme-cloud"),
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "c-1",
            "extra": "1",
        },
    )
    assert response.status_code == 200, response.text
    assert response.text == "c-1"
    body = json.dumps({"object": "whatsapp_business_account", "entry": []}).encode()
    response = await api.post(
        route("acme-cloud") + "?extra=1", content=body, headers=headers_for("acme-cloud", body)
    )
    assert response.status_code < 400, response.text


async def test_an_empty_parameter_name_names_nothing(api: httpx.AsyncClient) -> None:
    """``?=1`` names no parameter: answered as without it (200), as before 2f3e95f,
    which refused it 400 without a field."""
    for query in ("?=1", "?=", "?&=1&type=message", "?page_size=5&=x"):
        response = await api.get(f"/api/v1/events{query}")
        assert response.status_code == 200, (query, response.text)
    response = await api.get("/api/v1/identities?=1")
    assert response.status_code == 200, response.text


async def test_an_unknown_parameter_is_refused_showing_the_path_without_converters(
    api: httpx.AsyncClient,
) -> None:
    """The refusal showed the route's template with its converter
    ("{conversation_id:path}"), which no client asks for."""
    for path, shown in (
        (
            "/api/v1/conversations/whatsapp/acme-cloud/1",
            "GET /api/v1/conversations/{provider}/{instance}/{conversation_id} (it takes",
        ),
        ("/api/v1/handles/whatsapp/1", "GET /api/v1/handles/{provider}/{external_id} (it takes"),
        ("/api/v1/events/ev-1", "GET /api/v1/events/{event_id} (it takes"),
    ):
        response = await api.get(path, params={"bogus": "1"})
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert shown in message and ":path" not in message, message


async def test_a_parameter_sent_twice_is_400_naming_it(api: httpx.AsyncClient) -> None:
    """Each parameter of a read takes one value: ``type=message&type=edit`` was read as
    ``type=edit`` (an OR the client meant answered as one filter, the other dropped
    unsaid), ``page_size=10&page_size=1000`` as the last."""
    for path, name, values in [
        ("/api/v1/events", "type", ("message", "edit")),
        ("/api/v1/events", "provider", ("whatsapp", "whatsapp")),
        ("/api/v1/events", "page_size", ("10", "1000", "5")),
        ("/api/v1/identities", "include_merged", ("true", "false")),
        ("/api/v1/conversations/whatsapp/acme-cloud/1", "page_token", ("", "")),
        ("/api/v1/events/ev-1", "include_raw", ("true", "true")),
    ]:
        query = "&".join(f"{name}={v}" for v in values)
        r = await api.get(f"{path}?{query}")
        assert r.status_code == 400, (path, query, r.text)
        assert r.json()["error"] == {
            "code": "invalid_argument",
            "message": f"{name} was sent {len(values)} times; it takes one value",
            "field": name,
        }
    # Once each, as before.
    r = await api.get("/api/v1/events?type=message&direction=inbound&page_size=5")
    assert r.status_code == 200, r.text
