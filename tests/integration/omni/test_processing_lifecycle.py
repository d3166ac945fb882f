"""The processing status lifecycle over REST against real NATS and Valkey:
received -> processing -> completed | failed; failed with will_retry -> processing with
a higher attempt; completed and a final failure are terminal; the step recorded last,
again, is answered 200 with nothing written. Every refused step is 409
``failed_precondition`` naming the field (``state`` or ``attempt``) and leaves the stream
as it was; the read model shows what was accepted."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1.events_pb2 import (
    DIRECTION_INBOUND,
    EVENT_TYPE_MESSAGE,
    NormalizedEvent,
)
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.ingest.server import Ingest
from jetsource.projection.bootstrap import Projection
from tests.integration.omni.harness import caught_up

pytestmark = pytest.mark.integration


def p(attempt: int, worker: str = "w1") -> dict[str, Any]:
    return {"state": "processing", "worker": worker, "attempt": attempt}


def c(attempt: int, outcome: str = "sent", worker: str = "w1") -> dict[str, Any]:
    return {"state": "completed", "worker": worker, "attempt": attempt, "reason": outcome}


def f(attempt: int, retry: bool, reason: str = "timeout") -> dict[str, Any]:
    return {
        "state": "failed",
        "worker": "w1",
        "attempt": attempt,
        "reason": reason,
        "will_retry": retry,
    }


# (steps accepted first, the step refused, the field its refusal names)
REFUSED = [
    ([], c(1), "state"),  # nothing in progress to complete
    ([], f(1, True), "state"),
    ([p(1)], c(2), "attempt"),  # attempt 1 is in progress
    ([p(1)], f(2, False), "attempt"),
    ([p(1)], p(1, "w2"), "attempt"),  # attempt 1 taken by another worker
    ([p(2)], p(1), "attempt"),  # attempts never go back
    ([p(1), c(1)], p(2), "state"),  # completed is final
    ([p(1), c(1)], f(1, True), "state"),
    ([p(1), c(1)], c(1, "other outcome"), "state"),
    ([p(1), f(1, False)], p(2), "state"),  # a failure without retry is final
    ([p(1), f(1, False)], c(1), "state"),
    ([p(1), f(1, True)], c(1), "state"),  # a retry starts with processing
    ([p(1), f(1, True)], p(1), "attempt"),  # ... with a higher attempt
    ([p(1), f(1, True)], f(1, True, "other reason"), "state"),
    ([p(1), f(1, True), p(2), c(2)], p(3), "state"),
]

# (steps, each accepted; the state, attempts and retry count the reads show after them;
# the number of events the steps append)
ACCEPTED = [
    ([p(1), c(1)], ("completed", 1, 0), 2),
    ([p(1), f(1, True), p(2), f(2, True), p(3), c(3)], ("completed", 3, 2), 6),
    ([p(1), f(1, False)], ("failed", 1, 0), 2),
    ([p(1), p(3, "w2"), c(3, worker="w2")], ("completed", 3, 2), 3),  # a lost worker's attempt
    ([p(1), p(1)], ("processing", 1, 0), 1),  # the same step again: written once
    ([p(1), c(1), c(1)], ("completed", 1, 0), 2),
    ([p(1), f(1, True), f(1, True)], ("failed", 1, 0), 2),
    ([p(1), f(1, False), f(1, False)], ("failed", 1, 0), 2),
]


async def received(ingest: Ingest) -> str:
    """A stored normalized event (EventReceived at version 1), as the intake appends it."""
    event_id = str(uuid.uuid4())
    event = NormalizedEvent(
        id=event_id,
        provider="whatsapp",
        provider_event_id=f"wamid.{event_id}",
        event_type=EVENT_TYPE_MESSAGE,
        direction=DIRECTION_INBOUND,
        instance_name="acme",
        conversation_id="4915100000099",
        content_text="hello",
    )
    await ingest.store.append(event_id, [NewEvent(event, source="test")], NO_STREAM)
    return event_id


async def messages(ingest: Ingest) -> int:
    return int((await ingest.store.stream_info())["state"]["messages"])


async def step(http: httpx.AsyncClient, event_id: str, body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"/api/v1/events/{event_id}/status", json=body)


async def test_each_refused_transition_names_its_field_and_writes_nothing(
    ingest: Ingest, http: httpx.AsyncClient, projection: Projection
) -> None:
    shown: dict[str, tuple[str, int]] = {}
    for before, refused, field in REFUSED:
        event_id = await received(ingest)
        for body in before:
            r = await step(http, event_id, body)
            assert r.status_code == 200, (before, body, r.text)
        version = len(await ingest.store.read_aggregate(event_id))
        count = await messages(ingest)
        r = await step(http, event_id, refused)
        case = (before, refused)
        assert r.status_code == 409, (case, r.text)
        assert r.json()["error"]["code"] == "failed_precondition", (case, r.text)
        assert r.json()["error"]["field"] == field, (case, r.text)
        assert await messages(ingest) == count, case
        assert len(await ingest.store.read_aggregate(event_id)) == version, case
        last: dict[str, Any] = before[-1] if before else {"state": "received", "attempt": 0}
        shown[event_id] = (last["state"], last["attempt"])
    await caught_up(projection)
    for event_id, (state, attempts) in shown.items():
        status = (await http.get(f"/api/v1/events/{event_id}")).json()["event"]["status"]
        got = (status["state"], status.get("attempts", 0))  # JSON leaves zeros out
        assert got == (state, attempts), event_id


async def test_the_lifecycle_and_repeated_steps(
    ingest: Ingest, http: httpx.AsyncClient, projection: Projection
) -> None:
    shown: dict[str, tuple[str, int, int]] = {}
    for steps, want, appended in ACCEPTED:
        event_id = await received(ingest)
        count = await messages(ingest)
        versions = []
        for body in steps:
            r = await step(http, event_id, body)
            assert r.status_code == 200, (steps, body, r.text)
            versions.append(int(r.json()["version"]))
        assert await messages(ingest) == count + appended, steps
        # a repeat answers the version its step has
        assert versions[-1] == 1 + appended, (steps, versions)
        shown[event_id] = want
    await caught_up(projection)
    for event_id, want in shown.items():
        status = (await http.get(f"/api/v1/events/{event_id}")).json()["event"]["status"]
        got = (status["state"], status["attempts"], status.get("retry_count", 0))
        assert got == want, event_id
