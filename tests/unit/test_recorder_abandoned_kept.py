"""The observer's memory of abandoned claims is bounded.

A request that ends with claims of its own not settled (its caller cancelled it, the
claims bucket or the stream did not answer) leaves them "abandoned": the next request
meeting one takes it over at once instead of waiting out its lease. The set was only
emptied by a request meeting the same key again, so each event of every request
failed during an outage and never sent again stayed in the observer for the life of
the process. It now keeps the newest ``ABANDONED_KEPT``; one forgotten is taken over
after its lease, as another observer's claim is."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.domains.process import recorder as recorder_module
from jetsource.domains.process.claims import claim_key
from jetsource.domains.process.events import registry
from jetsource.domains.process.recorder import Recorder, RecorderOptions
from jetsource.eventstore.memory import InMemoryEventStore


class AwayClaims:
    """A claims bucket that does not answer (NATS away)."""

    async def create_many(self, pairs: list[Any]) -> list[int | None]:
        raise EventStoreUnavailableError("the claims bucket did not answer")

    async def get(self, key: str) -> None:
        return None


async def test_claims_abandoned_in_an_outage_are_kept_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recorder_module, "ABANDONED_KEPT", 100)
    rec = Recorder(InMemoryEventStore(registry), AwayClaims(), RecorderOptions())  # type: ignore[arg-type]
    for i in range(300):  # each event sent once, never again
        event = CanonicalEvent(process_id=f"p{i}", event_type="step", event_id=f"e{i}")
        with pytest.raises(EventStoreUnavailableError):
            await rec.record([event])
    kept = rec._abandoned
    assert len(kept) == 100  # before: 300, one per event ever failed
    # the newest are those kept: a retry of a recent request takes its claim over at once
    assert claim_key("e", "p299", "e299") in kept and claim_key("e", "p0", "e0") not in kept
