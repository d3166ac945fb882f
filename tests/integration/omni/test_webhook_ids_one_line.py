"""The ids a webhook names besides its message's own (a reaction's, an edit's or a
deletion's target message, a reply's quoted message, a poll vote's poll message, a
receipt's target) are kept in the event's metadata, shown and logged: one line, as the
message id is (6588a72). One holding a control character or U+2028/U+2029 was stored
as it came; it is 422 naming its path in the body, nothing written. A redelivery of a
body accepted before is still answered as the same events."""

from __future__ import annotations

import httpx
import pytest

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
