"""Bidi controls in an id a user chooses through our CLI or API where the id rule holds
(jetsource.core.printable's NOT_ID: the embeddings and overrides U+202A..U+202E, the
isolates U+2066..U+2069): refused naming the field and the character (U+XXXX), as a
control character is. They were kept and shown escaped: "ops\\u202etoor" as an actor
read as "opsroot" wherever a front end drew it raw, and two ids that look alike were
two. The fields: omni's --actor, omni processing's worker, repair void --actor, and the
process observer's source, correlation_id and idempotency_key. The marks U+061C, U+200E,
U+200F are kept there: they occur in real right-to-left names. The context commands'
ids and names of who did it (created_by, author, revised_by, assignee, closed_by and
the options) keep their one-line rule, the contract an outside differential test
holds the context service to: a bidi control is taken there, as before, so a command
sent before the upgrade is still taken and its idempotent resend answered. Story,
process, session and event ids take ASCII letters, digits, '-' and '_' (and '.', ':')
only. Texts keep their marks (right-to-left titles, names and bodies need them), and
ids a provider or a business chose (a webhook reply id, a Discord custom_id) are the
provider's text (tests/integration/omni)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.cli import output as out
from jetsource.cli.repair import app as repair_app
from jetsource.core.errors import ValidationError
from jetsource.core.printable import not_id_at, not_one_line_at, refused_at
from jetsource.domains.context.model import (
    AddDecision,
    AddSubtask,
    CloseContext,
    Command,
    ContextState,
    CreateContext,
    ReviseDecision,
    UpdateSubtask,
    decide,
    evolve,
)
from jetsource.domains.omni.identity import MAX_ACTOR, MAX_NAME, check_text
from jetsource.domains.omni.processing import check_step
from jetsource.domains.process.validation import FIXED_LIMITS, to_new_event

BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
MARKS = ["\u200e", "\u200f", "\u061c"]


def value_with(ch: str) -> str:
    return f"ops{ch}toor"  # the character at position 3


def named(ch: str) -> str:
    return f"a bidi control (U+{ord(ch):04X} at position 3)"


@pytest.mark.parametrize("ch", BIDI)
def test_the_id_rule_refuses_a_bidi_control_naming_it(ch: str) -> None:
    value = value_with(ch)
    assert not_one_line_at(value) is None  # one line, as a text
    assert not_id_at(value) == 3
    assert refused_at(value, 3) == named(ch)
    assert not_id_at("ops\x1b") == 3 and not_id_at("ops\u2028") == 3
    assert not_id_at("דנה לוי") is None and not_id_at("ana-1") is None


@pytest.mark.parametrize("ch", MARKS)
def test_the_id_rule_keeps_the_marks_of_right_to_left_names(ch: str) -> None:
    """U+200E, U+200F and U+061C occur in real right-to-left names: an id keeps them."""
    assert not_id_at(value_with(ch)) is None
    assert not_id_at(f"\u05d3\u05e0\u05d4{ch} \u0644\u064a\u0644\u0649") is None


def _story() -> ContextState:
    state = ContextState(id="c")
    for command in (CreateContext("story"), AddDecision("d1", "one"), AddSubtask("s1", "task")):
        for event in decide(command, state):
            state = evolve(state, event)
    return state


WHO: dict[str, Callable[[str], Command]] = {
    "created_by": lambda v: CreateContext("t", created_by=v),
    "author": lambda v: AddDecision("d9", "t", author=v),
    "revised_by": lambda v: ReviseDecision("d1", body="b", revised_by=v),
    "assignee": lambda v: AddSubtask("s9", "t", assignee=v),
    "closed_by": lambda v: CloseContext(closed_by=v),
}


@pytest.mark.parametrize("ch", BIDI + MARKS)
@pytest.mark.parametrize("field", list(WHO))
def test_who_did_it_in_a_context_command_keeps_the_one_line_rule(field: str, ch: str) -> None:
    """The context service's contract: who did it is one line of printable text, a bidi
    control taken as before 77cebf6 (a command sent before stays taken, as does its
    resend); a control character is still refused naming the field."""
    command = WHO[field](value_with(ch))
    state = ContextState(id="c") if isinstance(command, CreateContext) else _story()
    assert decide(command, state)
    assert decide(UpdateSubtask("s1", assignee=f"ana{ch}"), _story())
    with pytest.raises(ValidationError) as refused:
        decide(WHO[field]("ops\x1btoor"), state)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field} holds a control character (U+001B")


def test_a_context_text_keeps_its_bidi_marks() -> None:
    """A title or body in right-to-left text keeps its marks and isolates."""
    title = "\u05e9\u05dc\u05d5\u05dd \u2067abc\u2069\u200f"
    (created,) = decide(CreateContext(title, description=title), ContextState(id="c"))
    assert isinstance(created, ev.ContextCreated) and created.title == title


@pytest.mark.parametrize("ch", ["\u202e", "\u2068"])
def test_an_omni_actor_refuses_a_bidi_control_and_a_name_keeps_it(ch: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_text(value_with(ch), "actor", MAX_ACTOR, ident=True)
    assert refused.value.field == "actor" and named(ch) in str(refused.value)
    check_text(value_with(ch), "name", MAX_NAME)  # a display name is text


@pytest.mark.parametrize("ch", MARKS)
def test_an_omni_actor_keeps_the_marks_of_a_right_to_left_name(ch: str) -> None:
    check_text(f"\u05d3\u05e0\u05d4{ch}", "actor", MAX_ACTOR, ident=True)


@pytest.mark.parametrize("ch", ["\u202e", "\u2066"])
def test_an_omni_processing_worker_refuses_a_bidi_control_naming_it(ch: str) -> None:
    """The worker is recorded as the step event's source: an id, as the observer's."""
    with pytest.raises(ValidationError) as refused:
        check_step("evt-1", "completed", value_with(ch), 1, "")
    assert refused.value.field == "worker" and named(ch) in str(refused.value)
    for mark in MARKS:
        check_step("evt-1", "completed", f"\u05e2\u05d5\u05d1\u05d3{mark}-1", 1, "")


@pytest.mark.parametrize("ch", ["\u202e", "\u2066"])
@pytest.mark.parametrize("field", ["source", "correlation_id", "idempotency_key"])
def test_an_observer_events_chosen_ids_refuse_a_bidi_control(field: str, ch: str) -> None:
    event = CanonicalEvent(process_id="p-1", event_type="step_done", source="tool")
    setattr(event, field, value_with(ch))
    with pytest.raises(ValidationError) as refused:
        to_new_event(event, FIXED_LIMITS)
    assert refused.value.field == f"event.{field}"
    assert named(ch) in str(refused.value), refused.value
    for mark in MARKS:  # the marks of a right-to-left id are kept
        setattr(event, field, f"\u05db\u05dc\u05d9{mark}")
        to_new_event(event, FIXED_LIMITS)
    # A process's name is text: its marks are kept.
    started = CanonicalEvent(process_id="p-1", event_type="process_started", source="tool")
    started.data.update({"kind": "stage", "name": "\u05e9\u05dc\u05d1 \u200f1"})
    to_new_event(started, FIXED_LIMITS)


def test_a_void_actor_refuses_a_bidi_control_naming_the_option() -> None:
    result = CliRunner().invoke(
        repair_app,
        ["--seq", "7", "--yes", "--json", "--reason", "r", "--actor", value_with("\u202e")],
        catch_exceptions=False,
    )
    out.set_mode(None)
    error = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert result.exit_code == 2, error
    assert error["field"] == "--actor" and named("\u202e") in error["message"], error


def test_the_id_rule_says_exactly_what_it_refuses() -> None:
    """The rule keeps the marks U+200E, U+200F, U+061C (bidi controls too): the words
    an id's refusal gives name what it refuses, no bidi embedding, override or isolate
    (it said "no bidi control", which the kept marks are)."""
    with pytest.raises(ValidationError) as refused:
        check_text(value_with("\u202e"), "actor", MAX_ACTOR, ident=True)
    takes = "it takes one line of printable text, no bidi embedding, override or isolate"
    assert takes in str(refused.value), refused.value
    assert "no bidi control" not in str(refused.value)


@pytest.mark.parametrize("ch", ["\u202e", "\u2069", "\u200f"])
@pytest.mark.parametrize("name", ["idempotency_key", "correlation_id", "causation_id", "actor"])
def test_context_command_options_keep_the_one_line_rule(name: str, ch: str) -> None:
    """A context command's options are one line, as before 77cebf6: a bidi control is
    taken (the idempotent resend of a command sent before the upgrade is answered), a
    control character refused naming its path."""
    from jetsource._gen.context.v1 import commands_pb2 as pb
    from jetsource.domains.context.command_service import _options

    request = pb.CreateContextRequest(options=pb.CommandOptions(idempotency_key="k"))
    setattr(request.options, name, value_with(ch))
    assert getattr(_options(request), name) == value_with(ch)
    setattr(request.options, name, "ops\x1btoor")
    with pytest.raises(ValidationError) as refused:
        _options(request)
    assert refused.value.field == f"options.{name}"
    assert "U+001B at position 3" in str(refused.value), refused.value
