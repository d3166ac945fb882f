"""Bidi controls in an id a user chooses through our CLI or API (jetsource.core.printable's
NOT_ID: the marks U+061C, U+200E, U+200F, the embeddings and overrides U+202A..U+202E,
the isolates U+2066..U+2069): refused naming the field and the character (U+XXXX), as a
control character is. They were kept and shown escaped: "ops\\u202etoor" as an actor
read as "opsroot" wherever a front end drew it raw, and two ids that look alike were
two. The fields: who did it (the context commands' created_by, author, revised_by,
assignee, closed_by, and the context commands' options; omni's --actor; repair void
--actor) and the process observer's source, correlation_id and idempotency_key. Story,
process, session and event ids take ASCII letters, digits, '-' and '_' (and '.', ':')
only: a bidi control was refused there already. Texts keep their marks (right-to-left
titles, names and bodies need them), and ids a provider or a business chose (a webhook
reply id, a Discord custom_id) are the provider's text (tests/integration/omni)."""

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
from jetsource.domains.process.validation import FIXED_LIMITS, to_new_event

BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
MARKS = ["\u200e", "\u200f", "\u061c"]


def value_with(ch: str) -> str:
    return f"ops{ch}toor"  # the character at position 3


def named(ch: str) -> str:
    return f"a bidi control (U+{ord(ch):04X} at position 3)"


@pytest.mark.parametrize("ch", BIDI + MARKS)
def test_the_id_rule_refuses_a_bidi_control_naming_it(ch: str) -> None:
    value = value_with(ch)
    assert not_one_line_at(value) is None  # one line, as a text
    assert not_id_at(value) == 3
    assert refused_at(value, 3) == named(ch)
    assert not_id_at("ops\x1b") == 3 and not_id_at("ops\u2028") == 3
    assert not_id_at("דנה לוי") is None and not_id_at("ana-1") is None


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


@pytest.mark.parametrize("ch", ["\u202e", "\u2066", "\u200f"])
@pytest.mark.parametrize("field", list(WHO))
def test_who_did_it_in_a_context_command_refuses_a_bidi_control(field: str, ch: str) -> None:
    command = WHO[field](value_with(ch))
    state = ContextState(id="c") if isinstance(command, CreateContext) else _story()
    with pytest.raises(ValidationError) as refused:
        decide(command, state)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field} holds {named(ch)}"), refused.value
    with pytest.raises(ValidationError, match=r"U\+202E"):
        decide(UpdateSubtask("s1", assignee="ana\u202e"), _story())


def test_a_context_text_keeps_its_bidi_marks() -> None:
    """A title or body in right-to-left text keeps its marks and isolates."""
    title = "\u05e9\u05dc\u05d5\u05dd \u2067abc\u2069\u200f"
    (created,) = decide(CreateContext(title, description=title), ContextState(id="c"))
    assert isinstance(created, ev.ContextCreated) and created.title == title


@pytest.mark.parametrize("ch", ["\u202e", "\u2068", "\u061c"])
def test_an_omni_actor_refuses_a_bidi_control_and_a_name_keeps_it(ch: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_text(value_with(ch), "actor", MAX_ACTOR, ident=True)
    assert refused.value.field == "actor" and named(ch) in str(refused.value)
    check_text(value_with(ch), "name", MAX_NAME)  # a display name is text


@pytest.mark.parametrize("ch", ["\u202e", "\u2066"])
@pytest.mark.parametrize("field", ["source", "correlation_id", "idempotency_key"])
def test_an_observer_events_chosen_ids_refuse_a_bidi_control(field: str, ch: str) -> None:
    event = CanonicalEvent(process_id="p-1", event_type="step_done", source="tool")
    setattr(event, field, value_with(ch))
    with pytest.raises(ValidationError) as refused:
        to_new_event(event, FIXED_LIMITS)
    assert refused.value.field == f"event.{field}"
    assert named(ch) in str(refused.value), refused.value
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


@pytest.mark.parametrize("ch", ["\u202e", "\u2069"])
@pytest.mark.parametrize("name", ["idempotency_key", "correlation_id", "causation_id", "actor"])
def test_context_command_options_refuse_a_bidi_control_naming_their_path(
    name: str, ch: str
) -> None:
    from jetsource._gen.context.v1 import commands_pb2 as pb
    from jetsource.domains.context.command_service import _options

    request = pb.CreateContextRequest(options=pb.CommandOptions(idempotency_key="k"))
    setattr(request.options, name, value_with(ch))
    with pytest.raises(ValidationError) as refused:
        _options(request)
    assert refused.value.field == f"options.{name}"
    assert named(ch) in str(refused.value), refused.value
