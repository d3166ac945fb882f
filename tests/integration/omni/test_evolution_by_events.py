"""Evolution API's "Webhook by Events" (``webhook_by_events: true`` on the instance, or
``WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS``) posts each event to the configured URL with the
event's name appended: ``/webhooks/whatsapp/acme-evo/messages-upsert``. Through the
ingress on real NATS and Valkey: such a webhook is taken as the instance's own (it was
404 "no route", a status Evolution does not retry: every event lost), checked and
stored the same, the path archived; on a Cloud API instance, or with a segment that
is no event name, it is still no route."""

from __future__ import annotations

import httpx
import pytest

from jetsource.ingest.server import Ingest
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration

TEXT = (HERE / "whatsapp/evolution/text.json").read_bytes()
RECEIPT = (HERE / "whatsapp/evolution/status_read.json").read_bytes()


async def test_an_event_posted_to_its_own_url_is_the_instances(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    signed = headers_for("acme-evo", TEXT)
    r = await http.post(f"{route('acme-evo')}/messages-upsert", content=TEXT, headers=signed)
    assert r.status_code == 200, r.text
    [event] = r.json()["events"]
    assert event["stored"] is True
    record = await ingest.raw.get(r.json()["raw_id"])
    assert record is not None and record.path == "/webhooks/whatsapp/acme-evo/messages-upsert"
    # The same event on the instance's route is the same event: not stored again.
    again = await http.post(route("acme-evo"), content=TEXT, headers=signed)
    assert again.json()["events"] == [{**event, "stored": False}]
    r = await http.post(
        f"{route('acme-evo')}/messages-update",
        content=RECEIPT,
        headers=headers_for("acme-evo", RECEIPT),
    )
    assert r.status_code == 200 and r.json()["events"][0]["event_type"] == "status", r.text

    # Checked as on the instance's route: a wrong API key is 401, an unknown instance 404.
    wrong = await http.post(
        f"{route('acme-evo')}/messages-upsert", content=TEXT, headers={"apikey": "wrong"}
    )
    assert (wrong.status_code, wrong.json()["error"]["field"]) == (401, "apikey")
    unknown = await http.post("/webhooks/whatsapp/nobody/messages-upsert", content=TEXT)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_instance")

    # No such route for a Cloud API instance, nor for a segment that is no event name.
    for path in (
        f"{route('acme-cloud')}/messages-upsert",
        f"{route('acme-evo')}/MESSAGES_UPSERT",
        f"{route('acme-evo')}/messages.upsert",
    ):
        r = await http.post(path, content=TEXT, headers=signed)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"] == {
            "code": "not_found",
            "message": f"no route POST {path}",
            "field": "path",
        }


async def test_a_segment_that_is_no_event_name_is_no_route_whatever_the_instance(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    """The segment is checked first: with an instance nobody configured it was 404
    ``unknown_instance`` and the request archived as rejected (a scanner's two-segment
    paths reached the raw archive); now "no route", as on a configured instance, and
    nothing archived."""
    archived = int((await ingest.raw.info())["state"]["messages"])
    for path in (
        "/webhooks/whatsapp/nobody/NOT_AN_EVENT",
        "/webhooks/whatsapp/nobody/wp-login.php",
        f"{route('acme-cloud')}/NOT_AN_EVENT",
    ):
        r = await http.post(path, content=TEXT)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"] == {
            "code": "not_found",
            "message": f"no route POST {path}",
            "field": "path",
        }
    assert int((await ingest.raw.info())["state"]["messages"]) == archived
    # An event name on an unknown instance is still the instance's refusal.
    r = await http.post("/webhooks/whatsapp/nobody/messages-upsert", content=TEXT)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_instance")
