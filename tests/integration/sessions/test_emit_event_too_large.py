"""The emitter given one event too large for the ledger (past the stream's max message
size; through the observer, past its payload limit): the events queued with it are
recorded in order, an ``event_too_large`` marker (its type and size) takes its place
and the session goes on. The whole batch was refused and the session failed, losing
the valid events queued with it (real NATS; the observer path on the e2e stack)."""

from __future__ import annotations

import asyncio

import pytest

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.format import SessionEvent
from jetsource.domains.sessions.ledger import QueryReader
from jetsource.sdk import Observer
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

BIG = "x" * 2_000_000


def check(events: list[SessionEvent], size: int) -> None:
    assert [e.type for e in events] == [
        "session_started",
        "note",
        "event_too_large",
        "note",
        "session_ended",
    ], [e.type for e in events]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.data["i"] for e in events if e.type == "note"] == [1, 2]
    marker = events[2].data
    assert marker["type"] == "blob" and marker["bytes"] > size, marker
    assert "bytes" in marker["error"] or "larger than max" in marker["error"], marker
    assert events[-1].data["status"] == "completed", events[-1].data
    assert events[-1].data["dropped"] == 1


async def test_a_too_large_event_is_replaced_by_a_marker_the_rest_recorded(
    client: SessionsClient,
) -> None:
    async with session(client.writer, "probe") as s:
        s.emit("note", {"i": 1})
        s.emit("blob", {"text": BIG})
        s.emit("note", {"i": 2})
    assert s.error is None
    check(await client.sessions.export(s.id), len(BIG))
    record, _, _ = await client.sessions.show(s.id)
    assert record.status == "completed"


# 300,000: under the request's 1 MiB, one request with the notes, refused whole;
# 2,000,000: a request of its own; 5,000,000: over gRPC's 4 MiB, refused before the observer
@pytest.mark.parametrize("size", [300_000, 2_000_000, 5_000_000])
async def test_through_the_observer_the_same(stack: Stack, size: int) -> None:  # noqa: F811
    async with Observer(f"127.0.0.1:{stack.observer.port}", source="sdk-test") as observer:
        async with observer.session("probe") as s:
            s.emit("note", {"i": 1})
            s.emit("blob", {"text": "x" * size})
            s.emit("note", {"i": 2})
        await observer.flush()
    assert s.error is None, s.error
    reader = QueryReader(stack.reads)
    events: list[SessionEvent] = []
    for _ in range(300):
        events = [r.event for r in await reader.events(s.id)]
        if events and events[-1].type == "session_ended":
            break
        await asyncio.sleep(0.05)
    check(events, size)
