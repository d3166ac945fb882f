from __future__ import annotations

import pytest

from jetsource.domain.context.model import fold
from jetsource.domain.context.samples import story_events
from jetsource.domain.context.serialize import state_to_dict
from jetsource.query.views import context_view, state_view


@pytest.mark.parametrize("seed", range(5))
def test_a_state_and_its_dict_form_give_the_same_view(seed: int) -> None:
    events = story_events(f"s{seed}", 300, seed)
    for n in (1, 10, 150, 300):
        state = fold(events[:n], context_id=f"s{seed}")
        assert state_view(state) == context_view(state_to_dict(state))
    assert state_view(state).decisions and state_view(state).subtasks
