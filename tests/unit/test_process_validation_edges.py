"""The edges of the observer's rules (``domains/process/validation.py``): what is
accepted there is kept as sent, what is refused is named."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent, ProcessEventBody
from jetsource.core.errors import ValidationError
from jetsource.domains.process.validation import MAX_KIND, Limits, kind_problem, to_new_event


def _event(**fields: Any) -> CanonicalEvent:
    data = fields.pop("data", None)
    e = CanonicalEvent(process_id="p1", event_type=fields.pop("event_type", "step"), **fields)
    if data is not None:
        e.data.update(data)
    return e


def test_an_occurred_at_is_kept_by_its_presence_not_its_truth() -> None:
    one = _event()
    one.occurred_at.nanos = 1  # 1970-01-01T00:00:00.000000001Z
    assert to_new_event(one, Limits()).occurred_at_ns == 1
    assert to_new_event(_event(), Limits()).occurred_at_ns is None  # unset: recorded time
    zero = _event()
    zero.occurred_at.SetInParent()  # present, and the zero time
    with pytest.raises(ValidationError) as refused:
        to_new_event(zero, Limits())
    assert refused.value.field == "event.occurred_at"
    assert "zero time" in str(refused.value)


@pytest.mark.parametrize("char", ["\x00", "\x1f", "\x7f", "\x80", "\x85", "\x9b", "\x9f",
                                  "\u2028", "\u2029"])  # fmt: skip
@pytest.mark.parametrize(
    "field", ["source", "correlation_id", "idempotency_key", "attribute key", "attribute value"]
)
def test_control_characters_c0_del_c1_and_line_separators_are_refused(
    field: str, char: str
) -> None:
    text = f"a{char}b"
    if field == "attribute key":
        e, where = _event(attributes={text: "v"}), f"event.attributes[{text!r}]"
    elif field == "attribute value":
        e, where = _event(attributes={"k": text}), "event.attributes['k']"
    else:
        e, where = _event(**{field: text}), f"event.{field}"
    with pytest.raises(ValidationError) as refused:
        to_new_event(e, Limits())
    assert refused.value.field == where
    assert f"U+{ord(char):04X} at position 1" in str(refused.value)


@pytest.mark.parametrize("text", ["plain", "é ü 😀", "\u00a0nbsp", "zero\u200bwidth"])
def test_other_unicode_text_is_kept(text: str) -> None:
    kept = to_new_event(_event(source=text, attributes={text: text}), Limits())
    assert isinstance(kept.event, ProcessEventBody)
    assert (kept.source, dict(kept.event.attributes)) == (text, {text: text})


def test_a_kind_is_what_list_processes_can_ask_for() -> None:
    ok = _event(event_type="process_started", data={"kind": "k" * MAX_KIND})
    to_new_event(ok, Limits())
    for kind, why in (("k" * (MAX_KIND + 1), "at most 128"), ("a\x85", "U+0085")):
        bad = _event(event_type="process_started", data={"kind": kind})
        with pytest.raises(ValidationError) as refused:
            to_new_event(bad, Limits(), "events[3]")
        assert refused.value.field == "events[3].data.kind"
        assert why in str(refused.value)
        assert kind_problem(kind) is not None
        # Only process_started gives a process its kind; other events' data is theirs.
        to_new_event(_event(data={"kind": kind}), Limits())
    # A kind that is not text would be stored as no kind (the registry reads none),
    # never listable: refused naming it (tests/unit/test_probe3_process_started_text.py).
    with pytest.raises(ValidationError) as refused:
        to_new_event(_event(event_type="process_started", data={"kind": 5}), Limits())
    assert refused.value.field == "event.data.kind"
    assert kind_problem("k" * MAX_KIND) is None
