"""The ids a webhook names besides its message's own (a reaction's, an edit's or a
deletion's target message, a reply's quoted message, a poll vote's poll message, a
receipt's target) are kept in the event's metadata, shown and logged: one line, as the
message id is (6588a72). One holding a control character or U+2028/U+2029 was stored
as it came; it is 422 naming its path in the body, nothing written. A redelivery of a
body accepted before is still answered as the same events."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.ingest.server import Ingest
from tests.fixtures.omni import FIXTURES
from tests.integration.omni.test_omni_hostile_input import (
    Path,
    body_of,
    encoded,
    replaced,
    send,
    where,
)

pytestmark = pytest.mark.integration

WA = ("entry", 0, "changes", 0, "value", "messages", 0)
CASES: list[tuple[str, Path, str]] = [
    ("whatsapp/cloud/reaction.json", (*WA, "reaction", "message_id"), "target_message_id"),
    ("whatsapp/cloud/reply.json", (*WA, "context", "id"), "quoted.message_id"),
    ("discord/reaction_add.json", ("d", "message_id"), "target_message_id"),
    ("discord/reply.json", ("d", "message_reference", "message_id"), "quoted.message_id"),
    ("discord/poll_vote_add.json", ("d", "message_id"), "poll_message_id"),
    ("discord/delete.json", ("d", "id"), "deletion.target_message_id"),
    (
        "whatsapp/cloud/status_read.json",
        ("entry", 0, "changes", 0, "value", "statuses", 0, "id"),
        "receipt.target_message_id",
    ),
]


@pytest.mark.parametrize("bad", ["\x1b[2J", "\r\nX-Evil: 1", "\u2028b"])
@pytest.mark.parametrize(("fixture", "path", "named"), CASES)
async def test_an_id_the_event_keeps_is_one_line_or_422_naming_it(
    ingest: Ingest, http: httpx.AsyncClient, fixture: str, path: Path, named: str, bad: str
) -> None:
    f = next(f for f in FIXTURES if f.path == fixture)
    body = body_of(fixture)
    good = body
    for step in path:
        good = good[step]
    body = replaced(body, path, f"{good}{bad}")
    error = (await send(ingest, http, f.instance, encoded(body)))["error"]
    assert (error["code"], error["field"]) == ("malformed", where(path)), error
    what = "a line separator (U+2028" if "\u2028" in bad else "a control character (U+"
    assert f"{named} holds {what}" in error["message"], error


async def test_a_redelivery_of_a_body_taken_before_is_the_same_events(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    for fixture, _, _ in CASES:
        f = next(f for f in FIXTURES if f.path == fixture)
        body = encoded(body_of(fixture))
        first = await send(ingest, http, f.instance, body)
        again = await send(ingest, http, f.instance, body)
        assert first["status"] == again["status"] == "accepted", (fixture, first, again)
        ids = [e["id"] for e in first["events"]]
        assert ids and [e["id"] for e in again["events"]] == ids, (fixture, first, again)


TEXT = "whatsapp/cloud/text.json"
BUSINESS: list[tuple[str, Path, Any, str]] = [
    (
        "whatsapp/cloud/interactive_button_reply.json",
        (*WA, "interactive", "button_reply", "id"),
        None,
        "reply_id",
    ),
    (
        "whatsapp/cloud/interactive_list_reply.json",
        (*WA, "interactive", "list_reply", "id"),
        None,
        "reply_id",
    ),
    (
        TEXT,
        (*WA, "context"),
        {"referred_product": {"catalog_id": "1234", "product_retailer_id": "{sent}"}},
        "referred_product_product_retailer_id",
    ),
]


@pytest.mark.parametrize("sent", ["yes\nno", "sku\r\n\u2028\x1b[2J1"])
@pytest.mark.parametrize(("fixture", "path", "value", "key"), BUSINESS)
async def test_an_id_the_business_chose_is_stored_as_sent(
    ingest: Ingest,
    http: httpx.AsyncClient,
    fixture: str,
    path: Path,
    value: Any,
    key: str,
    sent: str,
) -> None:
    """A button's or list row's reply id and a catalog product's SKU are the
    business's, any text it chose: one holding a newline was 422 (7b1998e) on every
    tap, retried by the provider then dropped, where it was stored before. Kept as
    provider text, as a message body is (shown escaped)."""
    f = next(f for f in FIXTURES if f.path == fixture)
    if value is None:
        value = sent
    else:
        value = json.loads(json.dumps(value).replace("{sent}", json.dumps(sent)[1:-1]))
    body = replaced(body_of(fixture), path, value)
    answer = await send(ingest, http, f.instance, encoded(body))
    assert answer["status"] == "accepted", answer
    (event,) = answer["events"]
    (stored,) = await ingest.store.read_aggregate(event["id"])
    assert isinstance(stored.event, NormalizedEvent)
    assert stored.event.metadata.extra[key] == sent
