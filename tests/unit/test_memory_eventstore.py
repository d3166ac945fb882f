from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource.domains.context.events import registry
from jetsource.eventstore.jsapi import subject_matches
from jetsource.eventstore.memory import InMemoryEventStore
from tests.contract_eventstore import EventStoreContract


class TestInMemoryEventStore(EventStoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[InMemoryEventStore]:
        yield InMemoryEventStore(registry)


def test_subject_matching() -> None:
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")
    assert subject_matches("a.*.c", "a.b.c")
    assert not subject_matches("a.*", "a.b.c")
    assert not subject_matches("a.b", "a.c")
