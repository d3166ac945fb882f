"""The recorder's duplicate answer claims nothing new (in-memory claims and store).

(a, K1) recorded; (a, K3) is a duplicate of a by its id. It kept the key claim it made
for a (as the retry of an event stopped between its two claims does), though a never
carried K3, so (d, K3) was answered as a and d was never recorded. The key's claim is
kept only when a as stored carries the key: here it is released, d is recorded; an
event whose key's claim is missing (its first attempt stopped) still gets it back."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.domains.process.claims import ClaimValue, claim_key
from jetsource.domains.process.events import registry
from jetsource.domains.process.recorder import Recorder, RecorderOptions
from jetsource.eventstore.memory import InMemoryEventStore


class DictClaims:
    """Claims in a dict, with revisions as the bucket's."""

    def __init__(self) -> None:
        self.kv: dict[str, tuple[ClaimValue, int]] = {}
        self._rev = itertools.count(1)

    async def create(self, key: str, value: ClaimValue) -> int | None:
        if key in self.kv:
            return None
        rev = next(self._rev)
        self.kv[key] = (value, rev)
        return rev

    async def get(self, key: str) -> tuple[ClaimValue, int] | None:
        return self.kv.get(key)

    async def update(self, key: str, value: ClaimValue, revision: int) -> int | None:
        if key not in self.kv or self.kv[key][1] != revision:
            return None
        rev = next(self._rev)
        self.kv[key] = (value, rev)
        return rev

    async def put(self, key: str, value: ClaimValue) -> None:
        self.kv[key] = (value, next(self._rev))

    async def delete(self, key: str, revision: int) -> None:
        if key in self.kv and self.kv[key][1] == revision:
            del self.kv[key]

    async def create_many(self, pairs: list[tuple[str, ClaimValue]]) -> list[int | None]:
        return [await self.create(k, v) for k, v in pairs]

    async def put_many(self, pairs: list[tuple[str, ClaimValue]]) -> None:
        for k, v in pairs:
            await self.put(k, v)


def ev(event_id: str, key: str = "") -> CanonicalEvent:
    return CanonicalEvent(process_id="p", event_type="step", event_id=event_id, idempotency_key=key)


async def test_a_shared_id_under_another_key_claims_no_key() -> None:
    claims = DictClaims()
    rec = Recorder(InMemoryEventStore(registry), claims, RecorderOptions())
    [a] = await rec.record([ev("a", "K1")])
    [dup] = await rec.record([ev("a", "K3")])
    await rec.flush()
    assert dup.duplicate and dup.global_seq == a.global_seq
    assert claim_key("k", "p", "K3") not in claims.kv  # before: claimed for a
    [d] = await rec.record([ev("d", "K3")])
    assert not d.duplicate and d.process_seq == 2  # before: a duplicate of a
    [c] = await rec.record([ev("c", "K1")])  # the key decides; id c is not claimed
    await rec.flush()
    assert c.duplicate and c.global_seq == a.global_seq
    assert claim_key("e", "p", "c") not in claims.kv


async def test_the_missing_key_claim_of_the_same_event_is_still_made() -> None:
    claims = DictClaims()
    rec = Recorder(InMemoryEventStore(registry), claims, RecorderOptions())
    [a] = await rec.record([ev("a", "K1")])
    await rec.flush()
    del claims.kv[claim_key("k", "p", "K1")]  # a crash between the two claims
    [again] = await rec.record([ev("a", "K1")])
    await rec.flush()
    assert again.duplicate and again.global_seq == a.global_seq
    got = claims.kv[claim_key("k", "p", "K1")][0]
    assert got.event_id == "a" and got.done
    [other] = await rec.record([ev("x", "K1")])
    assert other.duplicate and other.global_seq == a.global_seq


class ReadFails(InMemoryEventStore):
    """Its reads of one version (the recorder's check of a stored event) fail while
    ``failing``."""

    failing = True

    async def read_aggregate(self, aggregate_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.failing and kwargs.get("to_version") is not None:
            raise EventStoreUnavailableError("the stream did not answer")
        return await super().read_aggregate(aggregate_id, *args, **kwargs)


async def test_a_key_claim_not_proven_for_a_failed_read_is_abandoned() -> None:
    """The check of the stored event fails: the request fails, and the key's claim it
    made is left pending, abandoned, out of flight (held in flight, it held every later
    request with the key); the next request with the key reads the event again before
    it is answered as ``a``: ``a`` does not carry K3, so ``(d, K3)`` is recorded."""
    claims = DictClaims()
    store = ReadFails(registry)
    rec = Recorder(store, claims, RecorderOptions())
    await rec.record([ev("a", "K1")])
    with pytest.raises(EventStoreUnavailableError):
        await rec.record([ev("a", "K3")])
    await rec.flush()
    assert not claims.kv[claim_key("k", "p", "K3")][0].done
    assert claim_key("k", "p", "K3") not in rec._inflight
    store.failing = False
    [d] = await rec.record([ev("d", "K3")])
    assert not d.duplicate and d.process_seq == 2


async def test_a_failed_read_keeps_the_key_claim_of_an_event_carrying_it() -> None:
    """``a`` stored with K1, its key's claim never made (a crash between the two
    claims): its retry's check of ``a`` fails. Deleting the key's claim then let
    ``(x, K1)`` record a second event under K1; abandoned, it is read again: x is a
    duplicate of a."""
    claims = DictClaims()
    store = ReadFails(registry)
    rec = Recorder(store, claims, RecorderOptions())
    [a] = await rec.record([ev("a", "K1")])
    await rec.flush()
    del claims.kv[claim_key("k", "p", "K1")]
    with pytest.raises(EventStoreUnavailableError):
        await rec.record([ev("a", "K1")])
    await rec.flush()
    store.failing = False
    [x] = await rec.record([ev("x", "K1")])
    await rec.flush()
    assert x.duplicate and x.event_id == "a" and x.global_seq == a.global_seq
    assert len(await store.read_aggregate("p")) == 1
    got = claims.kv[claim_key("k", "p", "K1")][0]
    assert got.event_id == "a" and got.done


class SlowCheck(InMemoryEventStore):
    """Its reads of one version (the recorder's check of a stored event) take a while."""

    async def read_aggregate(self, aggregate_id: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("to_version") is not None:
            await asyncio.sleep(0.2)
        return await super().read_aggregate(aggregate_id, *args, **kwargs)


async def test_a_key_claim_met_while_its_duplicate_checks_answers_nothing() -> None:
    """Two observers: ``(a, K3)`` on A holds K3's claim (naming a) while it reads a;
    ``(d, K3)`` on B meets it pending, a's id claim completed. It was answered as a
    (and completed K3 for a, so A's release did nothing): d is recorded."""
    claims = DictClaims()
    store = SlowCheck(registry)
    first = Recorder(store, claims, RecorderOptions())
    second = Recorder(store, claims, RecorderOptions())
    await first.record([ev("a", "K1")])
    await first.flush()
    dup = asyncio.create_task(first.record([ev("a", "K3")]))
    await asyncio.sleep(0.05)
    [d] = await second.record([ev("d", "K3")])
    [a3] = await dup
    await first.flush()
    await second.flush()
    assert a3.duplicate and a3.event_id == "a"
    assert not d.duplicate and d.event_id == "d" and d.process_seq == 2
    got = claims.kv[claim_key("k", "p", "K3")][0]
    assert got.event_id == "d" and got.done
    [again] = await first.record([ev("d", "K3")])
    assert again.duplicate and again.event_id == "d"


@pytest.mark.parametrize("lease", [60.0, 0.0])
async def test_a_key_claim_left_by_a_stopped_duplicate_answers_nothing(lease: float) -> None:
    """The observer stopped between the duplicate's K3 claim for a and its release: a
    pending K3 claim naming a, a's id claim completed. ``(d, K3)`` was answered as a
    at once, for good (within the lease, by a's completed id claim; past it, by the
    takeover); d is recorded."""
    claims = DictClaims()
    store = InMemoryEventStore(registry)
    first = Recorder(store, claims, RecorderOptions())
    await first.record([ev("a", "K1")])
    await first.flush()
    claims.kv[claim_key("k", "p", "K3")] = (ClaimValue("a", time.time_ns() - 1), 999)
    rec = Recorder(store, claims, RecorderOptions(claim_lease_s=lease))
    [d] = await rec.record([ev("d", "K3")])
    await rec.flush()
    assert not d.duplicate and d.event_id == "d" and d.process_seq == 2
    got = claims.kv[claim_key("k", "p", "K3")][0]
    assert got.event_id == "d" and got.done


class SlowDelete(DictClaims):
    async def delete(self, key: str, revision: int) -> None:
        await asyncio.sleep(0.05)
        await super().delete(key, revision)


async def test_a_released_key_claim_is_gone_before_its_waiters_wake() -> None:
    """One observer: ``(d, K3)`` waits on ``(a, K3)``'s claim of K3 in flight. It was
    woken before the release's delete landed, met the claim pending naming a and was
    answered as a: d is recorded."""
    claims = SlowDelete()
    rec = Recorder(InMemoryEventStore(registry), claims, RecorderOptions())
    await rec.record([ev("a", "K1")])
    await rec.flush()
    [a3], [d] = await asyncio.gather(rec.record([ev("a", "K3")]), rec.record([ev("d", "K3")]))
    await rec.flush()
    assert a3.duplicate and a3.event_id == "a"
    assert not d.duplicate and d.event_id == "d"
    assert claims.kv[claim_key("k", "p", "K3")][0].event_id == "d"
