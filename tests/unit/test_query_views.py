from __future__ import annotations

from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource.domains.context.model import fold
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.serialize import state_from_dict, state_to_dict
from jetsource.domains.context.views import (
    ViewEncoder,
    _Entries,
    context_view,
    state_view,
    with_context,
)


@pytest.mark.parametrize("seed", range(5))
def test_a_state_and_its_dict_form_give_the_same_view(seed: int) -> None:
    events = story_events(f"s{seed}", 300, seed)
    for n in (1, 10, 150, 300):
        state = fold(events[:n], context_id=f"s{seed}")
        assert state_view(state) == context_view(state_to_dict(state))
    assert state_view(state).decisions and state_view(state).subtasks


@pytest.mark.parametrize("max_nodes", [None, 12])
@pytest.mark.parametrize("seed", range(3))
def test_a_view_encoded_from_a_base_is_the_full_view(seed: int, max_nodes: int | None) -> None:
    cid = f"s{seed}"
    events = story_events(cid, 400, seed, max_nodes=max_nodes)
    events.append(ev.ContextClosed(reason="done", closed_by="me"))
    encoder = ViewEncoder(size=2)
    for cut in (1, 60, 250, 400):
        base = fold(events[:cut], context_id=cid)
        for extra in (0, 1, 7, 60, len(events) - cut):
            state = fold(events[cut : cut + extra], base)
            want = state_view(state)
            got = encoder.encode(state, base)
            assert got == want.SerializeToString(), (cut, extra)
            assert pb.ContextView.FromString(got) == want
    # Not folded from the base: an earlier state, a copy, another story, no base.
    late, early = fold(events, context_id=cid), fold(events[:100], context_id=cid)
    copy = state_from_dict(state_to_dict(late))
    other = fold(story_events("other", 50, seed + 1), context_id="other")
    for state in (early, copy, other, late):
        assert encoder.encode(state, late) == state_view(state).SerializeToString()
        assert encoder.encode(state) == state_view(state).SerializeToString()
    assert ViewEncoder(size=0).encode(late, early) == state_view(late).SerializeToString()


# The time-travel answers with_context encodes, one at a time: CopyFrom takes its own kind.
_Answer = TypeVar("_Answer", pb.GetContextAtVersionResponse, pb.GetContextAtTimeResponse)


def _assert_answer_with_view_is_whole(kind: type[_Answer], view: pb.ContextView) -> None:
    rest = kind(last_stream_sequence=99, snapshot_version=100, events_folded=20)
    rest.recorded_at.FromNanoseconds(1_700_000_000_123_456_789)
    whole = kind()
    whole.CopyFrom(rest)
    whole.context.CopyFrom(view)
    encoded = with_context(rest, view.SerializeToString())
    assert encoded == whole.SerializeToString()
    assert kind.FromString(encoded) == whole


def test_an_answer_with_an_encoded_view_is_the_whole_message() -> None:
    state = fold(story_events("w", 120, 3), context_id="w")
    view = state_view(state)
    _assert_answer_with_view_is_whole(pb.GetContextAtVersionResponse, view)
    _assert_answer_with_view_is_whole(pb.GetContextAtTimeResponse, view)
    assert pb.GetContextAtVersionResponse.FromString(
        with_context(pb.GetContextAtVersionResponse(), b"")
    ) == pb.GetContextAtVersionResponse(context=pb.ContextView())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 60), unique=True, max_size=25),
    st.lists(st.integers(0, 60), max_size=10),
    st.lists(st.integers(0, 60), max_size=10),
)
def test_spliced_entries_equal_entries_joined(
    base: list[int], replace: list[int], insert: list[int]
) -> None:
    keys = sorted(base)
    chunks = [b"<%d>" % k for k in keys]
    entries = _Entries(keys, chunks)
    replaced = {keys.index(k): b"[%d]" % k for k in replace if k in keys}
    inserted = [(k, b"+%d" % k) for k in set(insert) - set(keys)]
    want = dict(zip(keys, chunks, strict=True))
    want.update({keys[i]: chunk for i, chunk in replaced.items()})
    want.update(inserted)
    out: list[bytes | memoryview] = []
    entries.splice(replaced, inserted, out)
    assert b"".join(out) == b"".join(want[k] for k in sorted(want))
