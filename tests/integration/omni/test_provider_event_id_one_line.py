"""A webhook's message id (the event's ``provider_event_id``: the key its event id is
derived from, shown in reads and logged) is one line, as the handles and conversation
ids beside it: one holding a control character or U+2028/U+2029 was stored as it came.
Refused 422 naming the field where it is in the body, and nothing is written."""

from __future__ import annotations

import httpx
import pytest

from jetsource.ingest.server import Ingest
from tests.fixtures.omni import FIXTURES
from tests.integration.omni.test_omni_hostile_input import (
    MESSAGE,
    TEXT,
    body_of,
    encoded,
    replaced,
    send,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bad", ["wamid.\x1b[2J", "wamid.a\r\nX-Evil: 1", "wamid.\u2028b"])
async def test_a_message_id_with_a_control_character_is_422_naming_it(
    ingest: Ingest, http: httpx.AsyncClient, bad: str
) -> None:
    f = next(f for f in FIXTURES if f.path == TEXT)
    body = replaced(body_of(TEXT), ("entry", 0, "changes", 0, "value", "messages", 0, "id"), bad)
    error = (await send(ingest, http, f.instance, encoded(body)))["error"]
    assert (error["code"], error["field"]) == ("malformed", f"{MESSAGE}.id"), error
    what = "a line separator (U+2028" if "\u2028" in bad else "a control character (U+"
    assert f"provider_event_id holds {what}" in error["message"], error
    # One line of any script is taken.
    body = replaced(
        body_of(TEXT), ("entry", 0, "changes", 0, "value", "messages", 0, "id"), "wamid.é日"
    )
    answer = await send(ingest, http, f.instance, encoded(body))
    assert answer["status"] == "accepted", answer
