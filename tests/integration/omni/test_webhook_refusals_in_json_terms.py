"""A signed webhook body that is JSON but no object, or holds an integer literal of more
digits than Python's int() reads, is refused 400 naming ``body`` in JSON's terms, not
Python's: it said "body is a JSON NoneType" for ``null`` and, for a 5,000-digit
integer, "Exceeds the limit (4300 digits) for integer string conversion ...; use
sys.set_int_max_str_digits() to increase the limit" (advice for a Python programmer)."""

from __future__ import annotations

import httpx
import pytest

from jetsource.ingest.server import Ingest
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration

BODIES = {
    b"null": "body is null, not a JSON object",
    b'"hello"': "body is a string, not a JSON object",
    b"12": "body is a number, not a JSON object",
    b"1.5": "body is a number, not a JSON object",
    b"true": "body is true or false, not a JSON object",
    b"[1]": "body is an array, not a JSON object",
    b'{"object": "whatsapp_business_account", "x": ' + b"9" * 5000 + b"}": (
        "body is not JSON: an integer of 5,000 digits, more than this service reads"
    ),
    b'{"t": "MESSAGE_CREATE", "d": {"id": -' + b"1" * 4301 + b"}}": (
        "body is not JSON: an integer of 4,301 digits, more than this service reads"
    ),
}


@pytest.mark.parametrize("instance", ["acme-cloud", "acme-bot"])
async def test_a_body_that_is_no_object_or_holds_a_huge_integer_is_named_in_json_terms(
    ingest: Ingest, http: httpx.AsyncClient, instance: str
) -> None:
    for body, message in BODIES.items():
        response = await http.post(
            route(instance), content=body, headers=headers_for(instance, body)
        )
        assert response.status_code == 400, (body[:40], response.text[:300])
        error = response.json()["error"]
        assert (error["field"], error["message"]) == ("body", message), body[:40]
        assert "Python" not in error["message"] and "sys." not in error["message"]
    # An integer Python reads is read as before.
    body = b'{"object": "whatsapp_business_account", "entry": [], "x": ' + b"9" * 4300 + b"}"
    response = await http.post(route(instance), content=body, headers=headers_for(instance, body))
    assert response.status_code < 500 and "digits" not in response.text, response.text[:300]
