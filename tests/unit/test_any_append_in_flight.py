"""An ``ExpectedVersion.ANY`` append (the process recorder, the sessions pruner,
``append_many``'s fallback) refused for a write in flight (10164, a stream leader that
lost its quorum holds an earlier write): it reloaded and was refused again at once,
51 times, and ended in a ConcurrencyError though ANY has no conflict to report. It is
asked again with backoff within the attempts, then unavailable naming the stream."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from google.protobuf import wrappers_pb2

from jetsource.core import deadline
from jetsource.core.codec import EventRegistry
from jetsource.core.envelope import ANY, NewEvent
from jetsource.core.errors import (
    ConcurrencyError,
    DeadlineCutError,
    EventStoreUnavailableError,
)
from jetsource.eventstore import jetstream, jsapi
from tests.eventstore_fixtures import isolated_settings

registry = EventRegistry()
registry.register("Counted", 1, wrappers_pb2.Int64Value)


def _store(monkeypatch: pytest.MonkeyPatch, refusal: jsapi.JsApiError) -> tuple[Any, list[int]]:
    """A store whose every publish is refused with ``refusal``; the aggregate stays at
    version 3 (nothing stored since), and the stream's leadership looks healthy (a
    leader that lost quorum reads as one for its first seconds)."""
    store = jetstream.JetStreamEventStore(mock.MagicMock(), registry, isolated_settings("anyif"))
    published: list[int] = []

    async def nothing(*args: object) -> Any:
        return None

    async def sealed(*args: object) -> tuple[()]:
        return ()

    async def last(aggregate_id: str) -> tuple[int, int]:
        return 3, 10

    async def publish(*args: object) -> None:
        published.append(1)
        raise refusal

    async def call(fn: Any) -> Any:
        return await fn()

    monkeypatch.setattr(store, "start", nothing)
    monkeypatch.setattr(store, "_seal", sealed)
    monkeypatch.setattr(store, "_last", last)
    monkeypatch.setattr(store, "_find", nothing)
    monkeypatch.setattr(store, "_publish", publish)
    monkeypatch.setattr(store, "_call", call)
    monkeypatch.setattr(jsapi, "stream_leadership", nothing)
    return store, published


def _refusal(in_flight: bool) -> jsapi.JsApiError:
    error = jsapi.JsApiError(400, jsapi.ERR_WRONG_LAST_SEQUENCE, "wrong last sequence: 9")
    error.in_flight = in_flight
    return error


async def test_an_any_append_refused_for_a_write_in_flight_is_unavailable_not_a_conflict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, published = _store(monkeypatch, _refusal(in_flight=True))
    with pytest.raises(EventStoreUnavailableError) as refused:
        await store.append("p1", [NewEvent(wrappers_pb2.Int64Value(value=1))], ANY)
    message = str(refused.value)
    assert "CE_anyif" in message and "in flight" in message, message
    assert len(published) == store.settings.retry_attempts  # asked again, within its bound


async def test_an_any_append_that_keeps_losing_real_races_is_still_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain wrong-last-sequence (another writer stored first) is reloaded and tried
    again up to any_conflict_retries, as before."""
    store, published = _store(monkeypatch, _refusal(in_flight=False))
    monkeypatch.setattr(store.settings, "any_conflict_retries", 3)
    with pytest.raises(ConcurrencyError):
        await store.append("p1", [NewEvent(wrappers_pb2.Int64Value(value=1))], ANY)
    assert len(published) == 4


def _racing(monkeypatch: pytest.MonkeyPatch, refusals: int) -> tuple[Any, list[int]]:
    """A healthy cluster with other writers: each publish of ours is refused for a write
    in flight (a racer's, not visible yet where the story is looked up) ``refusals``
    times, and the story has moved on by the next look-up; then it is acknowledged."""
    store, published = _store(monkeypatch, _refusal(in_flight=True))

    looks: list[int] = []

    async def last(aggregate_id: str) -> tuple[int, int]:
        # Each try looks twice (its base, then after the refusal): the racer's write
        # is not visible yet after the refusal, and is by the next try's look-up.
        n = len(looks) // 2
        looks.append(1)
        return 3 + n, 10 + n

    async def publish(*args: object) -> Any:
        published.append(1)
        if len(published) <= refusals:
            raise _refusal(in_flight=True)
        return mock.Mock(duplicate=False, seq=100)

    monkeypatch.setattr(store, "_last", last)
    monkeypatch.setattr(store, "_publish", publish)
    return store, published


async def test_an_any_append_losing_races_on_a_healthy_cluster_is_not_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several observers appending to one story: each lost race is refused 10164 (the
    racer's write not yet visible), the story moving on each time. The count of
    refusals added up over the whole append, and the sixth said "its leader waits for
    a quorum" (UNAVAILABLE) of a healthy cluster; only stalls at one position count."""
    store, published = _racing(monkeypatch, refusals=6)
    monkeypatch.setattr(store.settings, "retry_backoff_s", 0.001)
    result = await store.append("p1", [NewEvent(wrappers_pb2.Int64Value(value=1))], ANY)
    assert len(published) == 7
    assert result.stream_seqs == [100] and result.versions == [3 + 6 + 1]


async def test_an_any_append_whose_deadline_leaves_no_wait_is_cut_not_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under 0.87 s left to the call (no time for a pause and another try), one healthy
    10164 said the cluster had lost its quorum: the leader is healthy (why None), so it
    is the deadline's cut (DEADLINE_EXCEEDED naming the write), not UNAVAILABLE."""
    store, published = _racing(monkeypatch, refusals=1)
    with deadline.within(0.8), pytest.raises(DeadlineCutError) as cut:
        await store.append("p1", [NewEvent(wrappers_pb2.Int64Value(value=1))], ANY)
    assert not isinstance(cut.value, EventStoreUnavailableError)
    assert "CE_anyif" in str(cut.value) and "in flight" in str(cut.value), cut.value
    assert len(published) == 1
