"""What the REST API says of a JSON body it cannot read, and of a time whose UTC offset
is no offset. A status update nested past the parser's recursion, or holding an integer
of more digits than int() takes, was 400 "body could not be read: send JSON encoded as
UTF-8" (it was UTF-8); ``since`` with an offset of +99:00 was 400 in datetime's words
("offset must be a timedelta strictly between -timedelta(hours=24) and
timedelta(hours=24), not datetime.timedelta(...)"). Each says what it is now, still 400
naming the field, and writes nothing."""

from __future__ import annotations

import httpx
import pytest

from jetsource.ingest.server import Ingest

pytestmark = pytest.mark.integration

STATUS = "/api/v1/events/nope/status"
BODIES = {
    b'{"state": "processing", "worker": "w", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}": (
        "body is not JSON this service reads: nested too deep"
    ),
    b'{"state": "processing", "worker": "w", "attempt": ' + b"9" * 5000 + b"}": (
        "body is not JSON this service reads: an integer of more digits than it takes"
    ),
    b'{"state": "processing", "worker": "\xff"}': (
        "body could not be read: send JSON encoded as UTF-8"
    ),
}


async def test_a_body_the_parser_cannot_read_is_named_for_what_it_is(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    before = int((await ingest.store.stream_info())["state"]["last_seq"])
    for body, message in BODIES.items():
        response = await http.post(
            STATUS, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, (body[:60], response.text[:300])
        assert response.json()["error"]["field"] == "body"
        assert response.json()["error"]["message"] == message, body[:60]
    assert int((await ingest.store.stream_info())["state"]["last_seq"]) == before


@pytest.mark.parametrize("offset", ["+99:00", "-24:00", "+05:60"])
async def test_a_since_whose_offset_is_no_utc_offset_is_400_saying_so(
    http: httpx.AsyncClient, offset: str
) -> None:
    since = f"2026-01-01T00:00:00{offset}"
    response = await http.get("/api/v1/events", params={"since": since})
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["field"] == "since"
    assert f"offset {offset} is no UTC offset: -23:59 to +23:59)" in error["message"]
    assert "timedelta" not in error["message"]
    assert (
        await http.get("/api/v1/events", params={"since": "2026-01-01T00:00:00+23:59"})
    ).status_code == 200
