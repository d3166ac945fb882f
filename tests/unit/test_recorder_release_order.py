"""Releases of the recorder's claims and what meets them after faults (in-memory
claims and store: the states are made by hand).

- A claim a request kept for its own event, released because the claim it waited on
  came to name another event (``_unkeep``), woke its waiters before the delete landed:
  a waiter met it still pending and waited a poll more (or took it over).
- A double fault (the stored event cannot be read, the claims bucket refuses deletes)
  leaves claims pending; a later request with the key completes it, once, in bounded
  time.
- A request with an event's id meeting a stale claim of its key that names that event,
  the id's claim missing, completed the key for the event though the event as stored
  does not carry it: a later event under the key was answered as it and never recorded."""

from __future__ import annotations

import asyncio
import time

import pytest

from jetsource.core.errors import EventStoreUnavailableError
from jetsource.domains.process.claims import ClaimValue, claim_key
from jetsource.domains.process.events import registry
from jetsource.domains.process.recorder import Recorder, RecorderOptions
from jetsource.eventstore.memory import InMemoryEventStore
from tests.unit.test_recorder_dup_claims_nothing import DictClaims, ReadFails, ev

OLD = 120 * 10**9  # a claim this old is past the default lease (60 s)
K = claim_key("k", "p", "K1")


class MovesOnce(DictClaims):
    """The claim of ``K1`` is read once as it was (pending, naming ``a``, its owner
    gone) and then has moved on: released and claimed for ``b``, whose request stopped
    too. Updates and deletes take a while (a bucket under load)."""

    def __init__(self) -> None:
        super().__init__()
        self.moved = False

    async def get(self, key: str) -> tuple[ClaimValue, int] | None:
        got = await super().get(key)
        if key == K and not self.moved:
            self.moved = True
            self.kv[key] = (ClaimValue("b", time.time_ns() - OLD), next(self._rev))
        return got

    async def update(self, key: str, value: ClaimValue, revision: int) -> int | None:
        await asyncio.sleep(0.05)
        return await super().update(key, value, revision)

    async def delete(self, key: str, revision: int) -> None:
        await asyncio.sleep(0.05)
        await super().delete(key, revision)


async def test_a_kept_claim_released_is_gone_before_its_waiters_wake() -> None:
    """``(a, K1)`` claims a's id and meets K1's claim naming a; that claim moves on to
    b (stopped): the request takes it over and appends b, releasing a's id claim. A
    waiter on it, ``(a, K2)``, was woken before the delete landed, met it pending and
    waited a poll (2 s here) before it claimed a again; now it claims at once. Either
    way a and b are stored once each."""
    claims = MovesOnce()
    store = InMemoryEventStore(registry)
    rec = Recorder(store, claims, RecorderOptions(claim_poll_s=2.0))
    claims.kv[K] = (ClaimValue("a", time.time_ns() - OLD), 7)
    first = asyncio.create_task(rec.record([ev("a", "K1")]))
    await asyncio.sleep(0.02)
    assert claim_key("e", "p", "a") in rec._inflight
    started = time.monotonic()
    [w] = await rec.record([ev("a", "K2")])
    waited = time.monotonic() - started
    [b] = await first
    await rec.flush()
    assert waited < 1.0  # before: 2.1 s (a poll)
    assert b.event_id == "b" and not b.duplicate
    assert w.event_id == "a" and not w.duplicate
    stored = [(r.event_id, r.envelope.idempotency_key) for r in await store.read_aggregate("p")]
    assert sorted(stored) == [("a", "K2"), ("b", "K1")]
    for key, event_id in [
        (K, "b"),
        (claim_key("k", "p", "K2"), "a"),
        (claim_key("e", "p", "a"), "a"),
    ]:
        value = claims.kv[key][0]
        assert value.event_id == event_id and value.done


class Faulty(DictClaims):
    """Deletes refused while ``failing``."""

    failing = False

    async def delete(self, key: str, revision: int) -> None:
        if self.failing:
            raise EventStoreUnavailableError("the claims bucket did not answer (delete)")
        await super().delete(key, revision)


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize("read_fails", [False, True])
async def test_a_double_fault_leaves_the_key_to_the_next_event(
    read_fails: bool, restart: bool
) -> None:
    """``(a, K3)`` after ``(a, K1)`` while the claims bucket refuses deletes (and,
    ``read_fails``, the stream does not answer the check of a): it fails, K3's claim
    left pending naming a. ``(d, K3)`` meets it while the deletes still fail (it fails
    too, or waits), then, the faults gone, on this observer or one restarted: d is
    recorded once, in well under the lease; later events under K3 are d."""
    claims = Faulty()
    store = ReadFails(registry)
    store.failing = False
    rec = Recorder(store, claims, RecorderOptions())
    [a] = await rec.record([ev("a", "K1")])
    await rec.flush()
    claims.failing = True
    store.failing = read_fails
    with pytest.raises(EventStoreUnavailableError):
        await rec.record([ev("a", "K3")])
    store.failing = False
    with pytest.raises(EventStoreUnavailableError):
        await rec.record([ev("d", "K3")])
    await rec.flush()
    claims.failing = False
    bound = 1.0
    if restart:  # it forgot what it abandoned: d's id claim is waited for, its lease
        rec = Recorder(store, claims, RecorderOptions(claim_lease_s=0.5))
        bound += 0.5
    started = time.monotonic()
    [d] = await asyncio.wait_for(rec.record([ev("d", "K3")]), 5.0)
    assert time.monotonic() - started < bound
    [x] = await rec.record([ev("x", "K3")])
    [again] = await rec.record([ev("a", "K3")])
    await rec.flush()
    assert not d.duplicate and d.event_id == "d" and d.process_seq == 2
    assert x.duplicate and x.event_id == "d" and x.global_seq == d.global_seq
    assert again.duplicate and again.event_id == "a" and again.global_seq == a.global_seq
    stored = [(r.event_id, r.envelope.idempotency_key) for r in await store.read_aggregate("p")]
    assert stored == [("a", "K1"), ("d", "K3")]
    for key, event_id in [(claim_key("k", "p", "K3"), "d"), (claim_key("e", "p", "d"), "d")]:
        value = claims.kv[key][0]
        assert value.event_id == event_id and value.done


@pytest.mark.parametrize("restart", [False, True])
async def test_a_failed_read_then_the_key_of_an_event_carrying_it(restart: bool) -> None:
    """a stored with K1, K1's claim missing; its retry's check of a fails (K1's claim
    left pending naming a), on this observer or after a restart ``(x, K1)`` is a
    duplicate of a at once, and K1's claim completed for a."""
    claims = DictClaims()
    store = ReadFails(registry)
    store.failing = False
    rec = Recorder(store, claims, RecorderOptions())
    [a] = await rec.record([ev("a", "K1")])
    await rec.flush()
    del claims.kv[K]
    store.failing = True
    with pytest.raises(EventStoreUnavailableError):
        await rec.record([ev("a", "K1")])
    store.failing = False
    if restart:
        rec = Recorder(store, claims, RecorderOptions())
    started = time.monotonic()
    [x] = await asyncio.wait_for(rec.record([ev("x", "K1")]), 5.0)
    assert time.monotonic() - started < 1.0
    await rec.flush()
    assert x.duplicate and x.event_id == "a" and x.global_seq == a.global_seq
    assert len(await store.read_aggregate("p")) == 1
    value = claims.kv[K][0]
    assert value.event_id == "a" and value.done


@pytest.mark.parametrize("age", [0, OLD])
async def test_a_stale_key_claim_of_the_event_itself_is_kept_only_if_carried(age: int) -> None:
    """a stored with K1; a stopped duplicate ``(a, K3)`` left K3's claim pending naming
    a, and a's id claim is missing (its first attempt's create never landed). ``(a,
    K3)`` takes K3's claim over (past its lease; within it, it waits the lease: 0.2 s
    here), finds a stored and completed K3 for a, which never carried K3: ``(d, K3)``
    was then answered as a and never recorded. K3's claim is released now; a's id
    claim is completed."""
    claims = DictClaims()
    store = InMemoryEventStore(registry)
    rec = Recorder(store, claims, RecorderOptions(claim_lease_s=0.2))
    [a] = await rec.record([ev("a", "K1")])
    await rec.flush()
    del claims.kv[claim_key("e", "p", "a")]
    claims.kv[claim_key("k", "p", "K3")] = (ClaimValue("a", time.time_ns() - age), 999)
    rec = Recorder(store, claims, RecorderOptions(claim_lease_s=0.2))
    [again] = await asyncio.wait_for(rec.record([ev("a", "K3")]), 5.0)
    await rec.flush()
    assert again.duplicate and again.event_id == "a" and again.global_seq == a.global_seq
    assert claim_key("k", "p", "K3") not in claims.kv  # before: completed for a
    value = claims.kv[claim_key("e", "p", "a")][0]
    assert value.event_id == "a" and value.done
    [d] = await rec.record([ev("d", "K3")])
    await rec.flush()
    assert not d.duplicate and d.event_id == "d" and d.process_seq == 2  # before: a's
    stored = [(r.event_id, r.envelope.idempotency_key) for r in await store.read_aggregate("p")]
    assert stored == [("a", "K1"), ("d", "K3")]
