"""Regressions of the session format found by the model-based test
(tests/integration/sessions/test_model_based.py)."""

from __future__ import annotations

import json

import pytest

from jetsource._gen.process.v1 import events_pb2
from jetsource.domains.sessions.format import (
    EventFormatError,
    SessionEvent,
    from_stored,
    to_canonical,
)


@pytest.mark.parametrize("n", [2**53, -(2**53), 2**53 - 1])
def test_the_largest_integer_allowed_comes_back_an_integer(n: int) -> None:
    """check_numbers lets |n| <= 2^53 through (exact in a double), but the way back
    turned 2^53 into 9007199254740992.0: an export printed a float for an int."""
    sent = SessionEvent(1_700_000_000_000_000_000, "s-1", 2, "custom_step", {"n": n, "l": [n]})
    ce = to_canonical(sent)
    back = from_stored(events_pb2.StoredEvent(event=ce, process_seq=2), "s-1")
    # JSON text, keys sorted: 9007199254740992 and 9007199254740992.0 differ here.
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(sent.to_dict(), sort_keys=True)
    assert type(back.data["n"]) is int


def test_an_event_type_longer_than_the_ledger_takes_is_refused_naming_type() -> None:
    doc = {"ts": "2026-12-02T21:40:00.123Z", "session": "s-1", "seq": 2, "type": "x" * 65,
           "data": {}}  # fmt: skip
    with pytest.raises(EventFormatError) as caught:
        SessionEvent.from_dict(doc)
    assert caught.value.field == "type"
    SessionEvent.from_dict({**doc, "type": "x" * 64})
