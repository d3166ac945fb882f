"""Free text taken from outside, each field by its rule (jetsource.core.printable):

- one line (``not_one_line_at``: no control character, no U+2028/U+2029): omni's
  identity ``--name`` and ``--actor``, an operator's linked ``external_id`` (U+2028/U+2029
  passed: its check knew only the terminal's unsafe characters), a webhook's handles
  (the sender's, the recipient's, a reactor's: they key the identity they resolve to),
  a process's ``name`` in its ``process_started`` (the registry's lists and trees; the
  ``kind`` beside it was checked already), and so a session's ``command`` (its root
  process's name), refused by the emitter before it starts;
- many lines (``not_lines_at``: tabs and line breaks LF, CR LF, U+2028/U+2029, no other
  control character): omni's merge ``--reason``, where a lone CR and CR CR LF are line
  breaks too (``lf_lines``: recorded as LF). Message bodies from webhooks are the
  provider's text and are kept as they come (a refusal would lose the message; nothing
  stored breaks on a NUL; every front end escapes on output).

Each was stored as it came: an ESC recoloured the terminal that listed it, a CR LF
forged a line in a log. Each is refused now naming its field (400 / INVALID_ARGUMENT;
a webhook's malformed field 422 naming its path, as every malformed field).

Machine-written text is kept, not refused, made safe instead: a status ``reason`` (a
worker's failure text, a tool's output: refused, the failure was never recorded and
every retry failed alike) is stored with its line breaks as LF and any other control
character as its visible escape (``as_lines``;
``tests/integration/omni/test_bad_input_ingest.py`` over HTTP); a webhook's display name
(the identity's name) has each character one line cannot hold as U+FFFD
(``as_one_line``)."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.errors import ValidationError
from jetsource.core.printable import as_lines, as_one_line, lf_lines, not_lines_at, not_one_line_at
from jetsource.domains.omni.identity import MAX_NAME, MAX_REASON, check_linked_handle, check_text
from jetsource.domains.omni.normalize.common import Node
from jetsource.domains.omni.normalize.errors import Malformed
from jetsource.domains.omni.processing import MAX_OUTCOME, check_step
from jetsource.domains.omni.processing import MAX_REASON as MAX_STATUS_REASON
from jetsource.domains.process.validation import FIXED_LIMITS, to_new_event
from jetsource.domains.sessions.emit import Session

ONE_LINE_BAD = [
    "a\x00b",
    "a\x1b[31mb",
    "a\nb",
    "a\r\nX-Evil: 1",
    "\ta",
    "a\x7f",
    "a\x85",
    "a\u2028b",
]
LINES_BAD = ["a\x00b", "a\x1b[31mb", "a\x07", "a\x7f", "a\x9b1m"]
LINES_FINE = ["line 1\nline 2", "a\r\nb\tc", "a\u2028b\u2029c", "plain é ✓"]


def said(value: str) -> str:
    """What the refusal calls the first character one line refuses: U+2028 is no
    control character (the refusals said so until 2026-12-07)."""
    return "a line separator" if value.startswith("a\u2028") else "a control character"


@pytest.mark.parametrize("value", ONE_LINE_BAD)
@pytest.mark.parametrize("field", ["name", "actor"])
def test_an_identity_name_or_actor_is_one_line(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=said(value)) as refused:
        check_text(value, field, MAX_NAME)
    assert refused.value.field == field


@pytest.mark.parametrize("value", LINES_BAD)
def test_a_merge_reason_takes_lines_but_no_other_control(value: str) -> None:
    with pytest.raises(ValidationError, match="control character") as refused:
        check_text(value, "reason", MAX_REASON, lines=True)
    assert refused.value.field == "reason"
    # The refusal says what the rule takes: a lone CR is a line break (recorded as LF),
    # where it said "LF or CR LF" while merge took a lone CR.
    assert str(refused.value).endswith(
        "it takes printable text, tabs and line breaks (LF, CR LF or a lone CR; stored as LF)"
    )


@pytest.mark.parametrize("value", LINES_FINE)
def test_a_merge_reason_of_many_lines_is_taken(value: str) -> None:
    check_text(value, "reason", MAX_REASON, lines=True)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("a\x00b", "a\\x00b"),
        ("a\x1b[31mb\x1b[0m", "a\\x1b[31mb\\x1b[0m"),
        ("a\rb", "a\nb"),
        ("a\r\r\nb", "a\nb"),
        ("10%\r100%\r\n", "10%\n100%\n"),
        ("a\x07\x7f\x9b1m", "a\\x07\\x7f\\x9b1m"),
        *((v, v.replace("\r\n", "\n")) for v in LINES_FINE),
    ],
)
def test_a_status_reason_is_kept_as_lines_with_controls_escaped(value: str, kept: str) -> None:
    assert as_lines(value) == kept
    assert not_lines_at(kept) is None
    check_step("evt-1", "failed", "worker-1", 1, kept)


@pytest.mark.parametrize("value", ["a\rb", "a\r\r\nb", "a\r\nb"])
def test_a_merge_reason_takes_any_line_break(value: str) -> None:
    check_text(value, "reason", MAX_REASON, lines=True)
    check_text(lf_lines(value), "reason", MAX_REASON, lines=True)
    assert lf_lines(value) == "a\nb"


@pytest.mark.parametrize("limit", [MAX_STATUS_REASON, MAX_OUTCOME])
@pytest.mark.parametrize("control", ["\x1b", "\x00", "\x9b"])
def test_a_status_reason_is_cut_never_inside_an_escape(limit: int, control: str) -> None:
    """Cut at what a step keeps after escaping, a plain cut of the escaped text kept
    "\\x1" of "\\x1b" at the end (a text the worker never wrote)."""
    code = as_lines(control)
    for pad in range(limit - 8, limit + 1):
        value = "t" * pad + control * 3 + "tail"
        kept = as_lines(value, limit)
        assert len(kept) <= limit and kept == as_lines(value)[: len(kept)]
        assert len(kept) > limit - len(code)  # no more cut than the escape that did not fit
        rest = kept[pad:]
        assert rest == code * (len(rest) // len(code)), (pad, rest)
    long = "x" * (limit + 10)
    assert as_lines(long, limit) == long[:limit]
    assert as_lines("é" * (limit + 1) + "\x1b", limit) == "é" * limit
    assert as_lines("a\r\nb", limit) == "a\nb"


@pytest.mark.parametrize("value", ONE_LINE_BAD)
def test_a_display_name_is_kept_one_line(value: str) -> None:
    name = as_one_line(value)
    assert "\ufffd" in name and not_one_line_at(name) is None
    check_text(name, "name", MAX_NAME)


@pytest.mark.parametrize("value", ["12\u2028345", "12\u2029345"])
def test_a_linked_external_id_with_a_line_separator_is_refused(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_linked_handle("discord", value)
    assert refused.value.field == "external_id"


@pytest.mark.parametrize("value", ONE_LINE_BAD)
def test_a_webhook_handle_is_one_line(value: str) -> None:
    node = Node({"from": value}, "entry[0].changes[0].value.messages[0]")
    with pytest.raises(Malformed, match=said(value)) as refused:
        node.req_handle("from")
    assert refused.value.field == "entry[0].changes[0].value.messages[0].from"
    assert Node({"from": "15551234567"}).req_handle("from") == "15551234567"


def _started(data: dict[str, Any]) -> CanonicalEvent:
    event = CanonicalEvent(process_id="p-1", event_type="process_started")
    event.data.update(data)
    return event


@pytest.mark.parametrize("value", ONE_LINE_BAD)
def test_a_process_name_is_one_line(value: str) -> None:
    with pytest.raises(ValidationError, match=said(value)) as refused:
        to_new_event(_started({"kind": "stage", "name": value}), FIXED_LIMITS)
    assert refused.value.field == "event.data.name"
    to_new_event(_started({"kind": "stage", "name": "level 1 ✓"}), FIXED_LIMITS)


@pytest.mark.parametrize("value", ONE_LINE_BAD)
def test_a_session_command_is_one_line(value: str) -> None:
    with pytest.raises(ValueError, match=f"command holds {said(value)}"):
        Session(object(), value)  # type: ignore[arg-type]
