"""Control characters in commands: a one-line value (a title, a name, a tag, an option)
takes none (an ESC recolours a terminal, a CR LF forges a log line or a header); a
multi-line text (body, rationale, description, reason) takes tabs and line breaks (LF,
CR LF or a lone CR, each recorded as LF) and no other. Refused as INVALID_ARGUMENT naming
the field. And a revision's
title, when given, meets AddDecision's rule: not blank."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.errors import ValidationError
from jetsource.domains.context.command_service import _options
from jetsource.domains.context.model import (
    AddDecision,
    AddSubtask,
    CloseContext,
    Command,
    ContextState,
    CreateContext,
    ReviseDecision,
    SupersedeDecision,
    UpdateSubtask,
    decide,
    evolve,
)

HOSTILE = [
    "a\x1b[31mred",
    "\x00",
    "c\r\nX-Evil: 1",
    "a\rb",
    "tab\there",
    "line\nbreak",
    "\x7f",
    "\x9b1m",
    "line\u2028separator",
    "para\u2029graph",
]
MULTILINE_OK = ["two\nlines", "crlf\r\nlines", "tab\tstop", "é 😀 日本語 \u202f"]
MULTILINE_BAD = ["\x00", "esc \x1b[2J", "bell\x07", "\x85", "\x7f"]


def said(value: str) -> str:
    """What a refusal calls the first character refused: U+2028/U+2029 are no control
    characters (the refusals said so until 2026-12-07)."""
    if "\u2028" in value:
        return "a line separator"
    return "a paragraph separator" if "\u2029" in value else "a control character"


def _story() -> ContextState:
    state = ContextState(id="c")
    for command in (
        CreateContext("story"),
        AddDecision("d1", "one"),
        AddDecision("d2", "two"),
        AddSubtask("s1", "task"),
    ):
        for event in decide(command, state):
            state = evolve(state, event)
    return state


ONE_LINE: dict[str, Callable[[str], Command]] = {
    "title": lambda v: AddDecision("d9", v),
    "author": lambda v: AddDecision("d9", "t", author=v),
    "created_by": lambda v: CreateContext("t", created_by=v),
    "tags": lambda v: CreateContext("t", tags=[v]),
    "assignee": lambda v: AddSubtask("s9", "t", assignee=v),
    "revised_by": lambda v: ReviseDecision("d1", body="b", revised_by=v),
    "closed_by": lambda v: CloseContext(closed_by=v),
}
LINES: dict[str, Callable[[str], Command]] = {
    "body": lambda v: AddDecision("d9", "t", body=v),
    "rationale": lambda v: ReviseDecision("d1", rationale=v),
    "description": lambda v: AddSubtask("s9", "t", description=v),
    "reason": lambda v: SupersedeDecision("d1", "d2", reason=v),
}


def _refused(command: Command) -> ValidationError:
    state = _story() if not isinstance(command, CreateContext) else ContextState(id="c")
    with pytest.raises(ValidationError) as err:
        decide(command, state)
    return err.value


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", list(ONE_LINE))
def test_one_line_fields_refuse_every_control_character(field: str, value: str) -> None:
    error = _refused(ONE_LINE[field](value))
    assert error.field == field
    assert str(error).startswith(field) and f" holds {said(value)} (U+" in str(error), error


@pytest.mark.parametrize("field", list(LINES))
def test_multi_line_texts_take_tabs_and_line_breaks_and_refuse_other_controls(
    field: str,
) -> None:
    for value in MULTILINE_OK:
        decide(LINES[field](value), _story())
    for value in MULTILINE_BAD:
        error = _refused(LINES[field](value))
        assert error.field == field, value
        assert str(error).endswith("(LF, CR LF or a lone CR; stored as LF)"), value
    # The same for a revision's body, a status update's assignee (one line)...
    assert _refused(ReviseDecision("d1", body="\x1b]0;pwned\x07")).field == "body"
    assert _refused(UpdateSubtask("s1", assignee="ana\n")).field == "assignee"


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("name", ["idempotency_key", "correlation_id", "causation_id", "actor"])
def test_command_options_refuse_control_characters_naming_their_path(name: str, value: str) -> None:
    options = pb.CommandOptions(idempotency_key="k")
    setattr(options, name, value)
    with pytest.raises(ValidationError) as err:
        _options(pb.AddDecisionRequest(context_id="c", options=options))
    assert err.value.field == f"options.{name}"
    assert f"options.{name} holds {said(value)} (U+" in str(err.value)


def test_printable_text_of_any_script_is_taken() -> None:
    text = "Ünïcödé 😀 日本語 — \u00a0nbsp \u202fnarrow"
    decide(AddDecision("d9", text, body=text, author=text), _story())
    options = pb.CommandOptions(idempotency_key=text, correlation_id=text, actor=text)
    assert _options(pb.AddDecisionRequest(options=options)).actor == text


@pytest.mark.parametrize("title", ["   ", "\t", " \n "])
def test_a_revision_refuses_a_blank_title_as_adding_does(title: str) -> None:
    for command in (AddDecision("d9", title), ReviseDecision("d1", title=title)):
        assert _refused(command).field == "title"
    # An empty title keeps the current one (a revision of the body alone).
    (event,) = decide(ReviseDecision("d1", body="new"), _story())
    assert evolve(_story(), event).decisions["d1"].title == "one"


def test_events_stored_before_the_rule_still_fold() -> None:
    """Only commands are checked: history holding control characters stays readable."""
    state = _story()
    event = ev.DecisionAdded(decision_id="d9", title="old \x1b[31m title\r\n")
    state = evolve(state, event)
    assert state.decisions["d9"].title == "old \x1b[31m title\r\n"


@pytest.mark.parametrize("field", list(LINES))
@pytest.mark.parametrize(
    "value", ["one\rtwo", "one\r\ntwo", "one\r\r\ntwo", "one\ntwo", "one\r\rtwo\r"]
)
def test_multi_line_texts_take_any_line_break_recorded_as_lf(field: str, value: str) -> None:
    """A lone CR (an old Mac's text, a paste) was refused ("a\\rb" at position 1) while
    omni's merge reason and status reason took it as a line break: each is recorded as
    LF, as there, and no CR reaches a terminal that shows the story."""
    (event,) = decide(LINES[field](value), _story())
    expected = value.replace("\r\r\n", "\n").replace("\r\n", "\n").replace("\r", "\n")
    assert getattr(event, field) == expected
    for command in (
        CreateContext("t", description=value),
        CloseContext(reason=value),
        AddDecision("d9", "t", rationale=value),
    ):
        state = ContextState(id="c") if isinstance(command, CreateContext) else _story()
        (event,) = decide(command, state)
        texts = [v for f, v in event.ListFields() if isinstance(v, str)]
        assert "\r" not in "".join(texts), event
        assert expected in texts, event


# Nothing visible: whitespace (a no-break space, an ideographic space) and invisible
# format characters (Cf: zero-width space, word joiner, BOM, the bidi controls). A title
# of zero-width spaces or of bidi controls alone was taken where "\u00a0" was refused.
INVISIBLE = [
    "\u00a0",
    "\u200b\u200b",
    "\u202e",
    "\u2066\u2069",
    "\u200e\u200f",
    "\ufeff \u2060",
    "\u3000\u200b",
    # Blank glyphs and marks with nothing to mark (they were taken as titles):
    "\u3164",  # HANGUL FILLER
    "\u115f\u1160",  # the Hangul choseong and jungseong fillers
    "\uffa0",  # HALFWIDTH HANGUL FILLER
    "\u2800\u2800",  # BRAILLE PATTERN BLANK
    "\ufe0f",  # a variation selector alone
    "\U000e0100 ",
    "\u0301\u0301",  # a combining accent with nothing to combine with
    "\u20dd",  # a combining enclosing circle alone
    "\u200b\u034f",
]


@pytest.mark.parametrize("value", INVISIBLE)
def test_a_text_that_shows_nothing_is_empty_by_one_rule(value: str) -> None:
    """Empty is one rule (jetsource.core.printable.blank): nothing visible once
    whitespace and format characters are taken out; each required text refuses it as
    it refuses "" and "   "."""
    assert _refused(CreateContext(value)).field == "title"
    assert _refused(AddDecision("d9", value)).field == "title"
    assert _refused(AddSubtask("s9", value)).field == "title"
    assert _refused(ReviseDecision("d1", title=value)).field == "title"
    error = _refused(CreateContext("t", tags=["ok", value]))
    assert (error.field, str(error)) == ("tags", "tags[1] is empty: remove it or give it text")


def test_bidi_controls_in_visible_text_are_kept_and_shown_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Right-to-left text needs its marks and isolates: a title holding them beside
    visible text is taken as given, and never shown raw, in text output nor in JSON
    (an escape in JSON is the same string to a reader)."""
    import json

    from jetsource.cli import output

    title = "\u2067\u05e9\u05dc\u05d5\u05dd\u2069 \u202eabc\u202c \u200fx"
    (event,) = decide(AddDecision("d9", title), _story())
    assert evolve(_story(), event).decisions["d9"].title == title
    shown = "\\u2067\u05e9\u05dc\u05d5\u05dd\\u2069 \\u202eabc\\u202c \\u200fx"
    assert output.printable(title) == shown
    output.emit_json({"title": title})
    shown = capsys.readouterr().out
    assert not any(ch in shown for ch in "\u2067\u2069\u202e\u202c\u200f"), shown
    assert json.loads(shown) == {"title": title}


# Visible glyphs the rule must not call empty: the prepended concatenation marks are
# format characters (Cf) yet drawn (an Arabic number sign, the end of an ayah); emoji
# joined with ZWJ, with VS16, a tag-sequence flag, right-to-left text with its marks.
VISIBLE = [
    "\u0600",
    "\u0601\u0602\u0603\u0604\u0605",
    "\u06dd",
    "\u070f",
    "\u0890\u0891",
    "\u08e2",
    "\U000110bd",
    "\U000110cd",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\u2764\ufe0f",
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "\u05e9\u05b8\u05dc\u05d5\u05b9\u05dd",
    "\u2067\u0645\u064e\u0631\u062d\u0628\u064b\u0627\u2069",
    "e\u0301",
    "\u0915\u093f",
]


@pytest.mark.parametrize("value", VISIBLE)
def test_a_text_that_shows_a_glyph_is_not_empty(value: str) -> None:
    """A title of U+0600 (a format character, Cf, drawn as the Arabic number sign) was
    refused 'title is required'."""
    (event,) = decide(AddDecision("d9", value), _story())
    assert evolve(_story(), event).decisions["d9"].title == value
    (created,) = decide(CreateContext(value, tags=[value]), ContextState(id="c"))
    assert evolve(ContextState(id="c"), created).title == value
