"""A refused item of a repeated field of a context command (tags, affects) is named with its
index in the message (the error's field stays the request's field), and an empty one is
called empty: one blank tag among several answered "tags is
required" (tags are optional) and a too long or control-character tag said "tags ..."
without saying which, unlike every other list of the API (``events[3].process_id``,
``event_types[1]``). Found by generated inputs (fuzz5, round 5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetsource.core.errors import ValidationError
from jetsource.domains.context.model import (
    MAX_TAG,
    AddDecision,
    AddSubtask,
    ContextState,
    CreateContext,
    decide,
    evolve,
)

GOOD_TAGS = st.text(alphabet="abcxyz-", min_size=1, max_size=10)
BAD_TAGS = st.sampled_from(["", " ", "\u3000", "x" * (MAX_TAG + 1), "a\x1bb", "a\nb"])


def story() -> ContextState:
    state = ContextState(id="c1")
    for command in (CreateContext("T"), AddDecision("d1", "one"), AddSubtask("s1", "task")):
        for event in decide(command, state):
            state = evolve(state, event)
    return state


@settings(max_examples=40, derandomize=True, deadline=None)
@given(tags=st.lists(GOOD_TAGS, max_size=8), bad=BAD_TAGS, data=st.data())
def test_a_refused_tag_is_named_by_its_index(
    tags: list[str], bad: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(tags)))
    tags.insert(at, bad)
    with pytest.raises(ValidationError) as err:
        decide(CreateContext("T", tags=tags), ContextState(id="c1"))
    assert err.value.field == "tags"  # the request's field; the message names the item
    assert str(err.value).startswith(f"tags[{at}] ")
    assert "required" not in str(err.value)


@settings(max_examples=30, derandomize=True, deadline=None)
@given(
    ids=st.lists(st.sampled_from(["d1", "s1"]), max_size=6),
    bad=st.sampled_from(["", " ", "a b", "a.b", "x" * 65]),
    data=st.data(),
)
def test_a_refused_affects_item_is_named_by_its_index(
    ids: list[str], bad: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(ids)))
    ids.insert(at, bad)
    with pytest.raises(ValidationError) as err:
        decide(AddDecision("d2", "two", affects=ids), story())
    assert err.value.field == "affects"
    assert str(err.value).startswith(f"affects[{at}] ")


def test_good_tags_and_affects_are_still_taken() -> None:
    (created,) = decide(CreateContext("T", tags=["a", "b-c"]), ContextState(id="c1"))
    assert list(created.tags) == ["a", "b-c"]  # type: ignore[attr-defined]
    (added,) = decide(AddDecision("d2", "two", affects=["d1", "s1"]), story())
    assert list(added.affects) == ["d1", "s1"]  # type: ignore[attr-defined]
