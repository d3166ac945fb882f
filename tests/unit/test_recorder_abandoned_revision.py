"""An abandoned claim is that claim, not its key (in-memory claims and store).

A release whose delete failed, or a create whose answer was lost, left the key marked
abandoned by name: the next pending claim met under it was taken over at once, with no
lease wait. When the delete had landed after all (its answer timed out), when it was
another delete of the same release that failed, or when the create never landed, that
claim was a fresh one, another observer's in flight: its key was taken over and its
event id appended with the content of another request under the same key (the event
stored under that id was not the one its caller was told was recorded). The mark now
holds the claim's revision (a create's: the value it wrote), and a claim made since is
waited on as any live claim is."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.domains.process.claims import ClaimValue, claim_key
from jetsource.domains.process.events import registry
from jetsource.domains.process.recorder import Recorder, RecorderOptions
from jetsource.eventstore.memory import InMemoryEventStore
from tests.unit.test_recorder_dup_claims_nothing import DictClaims, ev

K3 = claim_key("k", "p", "K3")


class Faulty(DictClaims):
    """Deletes land but their answer is lost while ``lose_deletes``; deletes of the
    keys in ``refuse`` fail without landing; creates fail without landing while
    ``away``."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_deletes = False
        self.refuse: set[str] = set()
        self.away = False

    async def delete(self, key: str, revision: int) -> None:
        if key in self.refuse:
            raise EventStoreUnavailableError("the claims bucket did not answer (delete)")
        await super().delete(key, revision)
        if self.lose_deletes:
            raise EventStoreUnavailableError("the claims bucket did not answer (delete)")

    async def create_many(self, pairs: list[tuple[str, ClaimValue]]) -> list[int | None]:
        if self.away:
            raise EventStoreUnavailableError("the claims bucket did not answer (create)")
        return await super().create_many(pairs)


class SlowFirstAppend(InMemoryEventStore):
    """Once ``gate`` is set, the first append waits for it (another observer's append
    in flight); later ones do not."""

    gate: asyncio.Event | None = None
    appends = 0

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        if self.gate is not None:
            self.appends += 1
            if self.appends == 1:
                await self.gate.wait()
        return await super().append(*args, **kwargs)


def step(event_id: str, source: str) -> CanonicalEvent:
    return CanonicalEvent(
        process_id="p", event_type="step", event_id=event_id, idempotency_key="K3", source=source
    )


async def _another_observers_claim_is_waited_on(
    claims: Faulty, store: SlowFirstAppend, a: Recorder
) -> None:
    """Observer B records (d, K3) (a fresh claim, its append slow); the retry of K3
    under a new id (z) on A meets B's claim: it is answered as d once d is stored, and
    d as stored is B's event."""
    b = Recorder(store, claims, RecorderOptions())  # a 60 s lease
    store.gate = asyncio.Event()
    b_task = asyncio.create_task(b.record([step("d", "client-of-d")]))
    await asyncio.sleep(0.05)
    assert claims.kv[K3][0] == ClaimValue("d", claims.kv[K3][0].since_ns)  # pending, d
    a_task = asyncio.create_task(a.record([step("z", "client-of-z")]))
    await asyncio.sleep(0.2)
    store.gate.set()
    [d], [z] = await asyncio.wait_for(asyncio.gather(b_task, a_task), 5)
    stored = await store.read_aggregate("p")
    under_k3 = [r for r in stored if r.envelope.idempotency_key == "K3"]
    assert len(under_k3) == 1
    assert under_k3[0].event_id == "d" and "client-of-d" in str(under_k3[0])  # before: z's
    assert not d.duplicate and z.duplicate and z.event_id == "d"


async def test_a_release_whose_delete_landed_leaves_no_mark_on_the_next_claim() -> None:
    claims = Faulty()
    store = SlowFirstAppend(registry)
    a = Recorder(store, claims, RecorderOptions())
    await a.record([ev("a", "K1")])
    await a.flush()
    # (a, K3): a duplicate of a by its id; the K3 claim it made is released (a lacks
    # K3), the delete lands, its answer is lost.
    claims.lose_deletes = True
    with pytest.raises(EventStoreUnavailableError):
        await a.record([ev("a", "K3")])
    await a.flush()
    claims.lose_deletes = False
    assert K3 not in claims.kv
    await _another_observers_claim_is_waited_on(claims, store, a)


async def test_a_create_that_never_landed_leaves_no_mark_on_the_next_claim() -> None:
    claims = Faulty()
    store = SlowFirstAppend(registry)
    a = Recorder(store, claims, RecorderOptions())
    claims.away = True
    with pytest.raises(EventStoreUnavailableError):
        await a.record([ev("y", "K3")])
    claims.away = False
    assert K3 not in claims.kv
    await _another_observers_claim_is_waited_on(claims, store, a)


async def test_only_the_claims_whose_delete_failed_are_abandoned() -> None:
    """One release of two claims (x's and w's id claims: each a duplicate by its key),
    w's delete refused: x's, deleted, was marked abandoned too. B then records x under
    a key of its own (its append slow); the retry of x on A met x's id claim, B's in
    flight, took it over at once and appended x itself (B's append was then answered
    as stored already, and both as new). It waits for B's now, and is its duplicate;
    w's claim, left pending, is still taken over at once."""
    claims = Faulty()
    store = SlowFirstAppend(registry)
    a = Recorder(store, claims, RecorderOptions())
    await a.record([ev("a", "K1"), ev("b", "K2")])
    await a.flush()
    claims.refuse = {claim_key("e", "p", "w")}
    with pytest.raises(EventStoreUnavailableError):
        await a.record([ev("x", "K1"), ev("w", "K2")])
    await a.flush()
    claims.refuse = set()
    assert claim_key("e", "p", "x") not in claims.kv and claim_key("e", "p", "w") in claims.kv
    b = Recorder(store, claims, RecorderOptions())  # a 60 s lease
    store.gate = asyncio.Event()
    b_task = asyncio.create_task(b.record([ev("x", "K9")]))
    await asyncio.sleep(0.05)
    a_task = asyncio.create_task(a.record([ev("x", "K9")]))
    await asyncio.sleep(0.2)
    store.gate.set()
    [x], [again] = await asyncio.wait_for(asyncio.gather(b_task, a_task), 5)
    stored = [r.event_id for r in await store.read_aggregate("p")]
    assert stored.count("x") == 1, stored
    assert not x.duplicate and again.duplicate and again.global_seq == x.global_seq  # before: new
    [w] = await asyncio.wait_for(a.record([ev("w", "K5")]), 5)
    assert not w.duplicate


async def test_a_create_that_landed_is_still_taken_over_at_once() -> None:
    """The create's answer lost: its claim, met by the retry, is taken over at once
    (no lease wait), as before."""

    class LostCreate(DictClaims):
        lose = True

        async def create_many(self, pairs: list[tuple[str, ClaimValue]]) -> list[int | None]:
            got = await super().create_many(pairs)
            if self.lose:
                raise EventStoreUnavailableError("the claims bucket did not answer (create)")
            return got

    claims = LostCreate()
    store = InMemoryEventStore(registry)
    a = Recorder(store, claims, RecorderOptions())  # a 60 s lease
    with pytest.raises(EventStoreUnavailableError):
        await a.record([ev("y", "K3")])
    claims.lose = False
    assert not claims.kv[K3][0].done
    [y] = await asyncio.wait_for(a.record([ev("y", "K3")]), 5)
    assert not y.duplicate and [r.event_id for r in await store.read_aggregate("p")] == ["y"]


class LoseThenAway(Faulty):
    """Creates land but their answer is lost while ``lose_creates``."""

    lose_creates = False

    async def create_many(self, pairs: list[tuple[str, ClaimValue]]) -> list[int | None]:
        got = await super().create_many(pairs)
        if self.lose_creates:
            raise EventStoreUnavailableError("the claims bucket did not answer (create)")
        return got


@pytest.mark.parametrize("retries_in_outage", [1, 6])
async def test_a_retry_in_the_outage_keeps_the_pending_claim_taken_over_at_once(
    retries_in_outage: int,
) -> None:
    """(y, K3)'s create lands, its answer lost (marked: the value it wrote); retries
    while the bucket is away fail before any create lands. The mark was one per key,
    replaced by each retry's value: the retry after the outage met the first claim,
    still pending, matched no mark and waited out its 60 s lease. Marks are added now
    (the first of a run kept past the bound), and it is taken over at once."""
    claims = LoseThenAway()
    store = InMemoryEventStore(registry)
    a = Recorder(store, claims, RecorderOptions())  # a 60 s lease
    claims.lose_creates = True
    with pytest.raises(EventStoreUnavailableError):
        await a.record([ev("y", "K3")])
    claims.lose_creates, claims.away = False, True
    for _ in range(retries_in_outage):
        with pytest.raises(EventStoreUnavailableError):
            await a.record([ev("y", "K3")])
    claims.away = False
    assert not claims.kv[K3][0].done
    [y] = await asyncio.wait_for(a.record([ev("y", "K3")]), 5)  # before: the lease
    assert not y.duplicate and [r.event_id for r in await store.read_aggregate("p")] == ["y"]


class AppendAway(InMemoryEventStore):
    """Appends fail (nothing stored) while ``away``."""

    away = False

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        if self.away:
            raise EventStoreUnavailableError("the event store did not answer")
        return await super().append(*args, **kwargs)


async def test_a_failed_append_stays_marked_after_a_failed_create_on_its_keys() -> None:
    """(y, K3)'s claims are made, its append fails (its claims marked: their
    revisions). The retry while the claims bucket is away fails before its creates
    land; its marks replaced the first ones, and the retry after the outage met y's
    pending claims, matched no mark and waited out their 60 s lease. They are taken
    over at once now, and y appended."""
    claims = Faulty()
    store = AppendAway(registry)
    a = Recorder(store, claims, RecorderOptions())  # a 60 s lease
    store.away = True
    with pytest.raises(EventStoreUnavailableError):
        await a.record([ev("y", "K3")])
    store.away, claims.away = False, True
    with pytest.raises(EventStoreUnavailableError):
        await a.record([ev("y", "K3")])
    claims.away = False
    assert not claims.kv[K3][0].done
    [y] = await asyncio.wait_for(a.record([ev("y", "K3")]), 5)  # before: the lease
    assert not y.duplicate and [r.event_id for r in await store.read_aggregate("p")] == ["y"]
