"""The context model's document encoder writes exactly json.dumps(state_to_dict(s),
separators=(",", ":"), sort_keys=True), whatever the text holds (quotes, escapes,
non-ASCII, the encoder's own placeholders), at every version of generated histories,
with its cache warm across versions (read-model digests compare these bytes)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.domains.context.model import ContextState, evolve
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.serialize import StateEncoder, state_to_dict


def plain(state: ContextState) -> str:
    return json.dumps(state_to_dict(state), separators=(",", ":"), sort_keys=True)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 120))
def test_equal_to_a_full_encode_at_every_version(seed: int, size: int) -> None:
    encoder = StateEncoder(size=50)  # small: entries evicted and encoded again too
    state = ContextState(id="s")
    for event in story_events("s", size, seed):
        state = evolve(state, event)
        assert encoder.encode(state) == plain(state)


@settings(max_examples=60, deadline=None)
@given(text=st.text())
def test_any_text_including_the_placeholders(text: str) -> None:
    encoder = StateEncoder()
    tricky = [
        text,
        '"decisions":"\\u0000decisions\\u0000"',
        "\x00decisions\x00",
        "\x00subtasks\x00",
    ]
    state = evolve(ContextState(id="s"), ev.ContextCreated(title=tricky[0], description=tricky[1]))
    for i, t in enumerate(tricky):
        state = evolve(state, ev.DecisionAdded(decision_id=f"d{i}", title=t, body=text))
        state = evolve(state, ev.SubtaskAdded(subtask_id=f"t{i}", title=t, description=text))
        assert encoder.encode(state) == plain(state)
