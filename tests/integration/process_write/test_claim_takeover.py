"""Claims of one event (its id's and its idempotency key's) after a takeover and across
an observer restart, on a real NATS: a request whose event is already appended answers
at once with the recorded positions; a claim whose owner died is taken over within its
lease (short here, through the settings); nothing lost, nothing appended twice, and
both claims end completed."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest

from jetsource.core.clock import now_ns
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.domains.process.claims import ClaimValue, claim_key
from jetsource.observer.server import Observer, build
from tests.infra import Server
from tests.integration.process_write.conftest import observer_settings
from tests.integration.process_write.helpers import event, history

pytestmark = pytest.mark.integration

# Long enough that a request waiting it out is told apart from one answered at once on
# a loaded 2-core machine; short enough for the cases that must wait it out.
LEASE_S = 4.0
AT_ONCE_S = 2.0  # measured: 0.01 to 0.2 s; the rest is room for load
# A dead owner's claim: taken over at the lease's end, the next poll (0.05 s) and a
# read of the process's history later.
WITHIN_LEASE_S = LEASE_S + 2.0


def pid() -> str:
    return f"claims-{uuid.uuid4().hex[:10]}"


async def _observer(nats_server: Server) -> Observer:
    return await build(observer_settings(nats_server, claim_lease_s=LEASE_S))


async def first_attempt_fails(
    owner: Observer, e: Any, stored: bool, monkeypatch: pytest.MonkeyPatch
) -> list[Any]:
    """Record ``e`` on ``owner`` with its append failing, before or after it stores the
    event (``stored``): its claims are left pending, abandoned. The history after it."""
    append = owner.recorder._lanes

    async def fail(lanes: list[Any]) -> object:
        if stored:
            await append(lanes)
        raise EventStoreUnavailableError("the answer is lost (test)")

    monkeypatch.setattr(owner.recorder, "_lanes", fail)
    with pytest.raises(EventStoreUnavailableError):
        await owner.recorder.record([e])
    monkeypatch.undo()
    before = await history(owner.store, e.process_id)
    assert len(before) == (1 if stored else 0)
    return before


async def asked_in_turn(
    asker: Observer, requests: list[Any], first_waits: bool
) -> tuple[list[Any], list[float]]:
    """Each request recorded alone, one after another, within AT_ONCE_S (the first
    within the lease when ``first_waits``); their answers and how long each took."""
    answers, took = [], []
    for i, request in enumerate(requests):
        bound = WITHIN_LEASE_S if i == 0 and first_waits else AT_ONCE_S
        started = time.monotonic()
        async with asyncio.timeout(bound):
            [answer] = await asker.recorder.record([request])
        took.append(round(time.monotonic() - started, 3))
        answers.append(answer)
    await asker.recorder.flush()
    return answers, took


async def one_event_answered(
    asker: Observer,
    e: Any,
    keys: dict[str, str],
    answers: list[Any],
    duplicates: list[bool],
    took: list[float],
) -> None:
    """``e`` alone is stored; every answer names it (``duplicates`` their flags), and each
    of its claims (``keys``) is completed naming it."""
    after = await history(asker.store, e.process_id)
    assert [r.event_id for r in after] == [e.event_id], took
    [stored] = after
    for answer in answers:
        assert (answer.event_id, answer.global_seq, answer.process_seq) == (
            e.event_id,
            stored.stream_seq,
            stored.version,
        ), took
    assert [a.duplicate for a in answers] == duplicates, took
    for kind, key in keys.items():
        got = await asker.recorder._claims.get(key)
        assert got is not None and got[0].done, (kind, took)
        assert (got[0].event_id, got[0].global_seq) == (e.event_id, stored.stream_seq)
    print(f"took {took} s")  # the measured bounds, shown with -s


async def test_a_key_claim_left_pending_by_an_id_takeover_answers_at_once_after_a_restart(
    nats_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt claims the event's id and key, then its append fails (the
    event store away): both claims stay pending. The retry takes over the id's claim
    and appends the event. The observer restarts; the next request with the key (a new
    event id) answers at once with the event. It used to find the key's claim still
    pending, no longer known as abandoned after the restart, and wait out its lease."""
    p = pid()
    e = event(p, "step", event_id="taken-over", idempotency_key="k-taken-over")
    first = await _observer(nats_server)
    try:

        async def away(lanes: object) -> object:
            raise EventStoreUnavailableError("the event store is away (test)")

        monkeypatch.setattr(first.recorder, "_lanes", away)
        with pytest.raises(EventStoreUnavailableError):
            await first.recorder.record([e])
        monkeypatch.undo()
        [appended] = await first.recorder.record([e])  # the retry: takes the id's claim over
        assert appended.duplicate is False
        await first.recorder.flush()
    finally:
        await first.stop(1.0)

    second = await _observer(nats_server)  # the restart
    try:
        started = time.monotonic()
        async with asyncio.timeout(AT_ONCE_S):
            [by_key] = await second.recorder.record(
                [event(p, "step", idempotency_key="k-taken-over")]
            )
        took = time.monotonic() - started
        assert (by_key.duplicate, by_key.event_id, by_key.global_seq) == (
            True,
            e.event_id,
            appended.global_seq,
        ), took
        await second.recorder.flush()
        for kind, value in (("e", e.event_id), ("k", e.idempotency_key)):
            got = await second.recorder._claims.get(claim_key(kind, p, value))
            assert got is not None and got[0].done, kind
            assert (got[0].event_id, got[0].global_seq) == (e.event_id, appended.global_seq)
        assert [r.event_id for r in await history(second.store, p)] == [e.event_id]
    finally:
        await second.stop(1.0)


STATES = ("pending", "completed", "expired")
CASES = [
    (e_state, k_state, stored, restart)
    for e_state, k_state in itertools.product(STATES, STATES)
    for stored in (True, False)
    # a completed claim holds the positions of a stored event
    if stored or "completed" not in (e_state, k_state)
    for restart in (False, True)
]


def _waits_out_a_lease(e_state: str, k_state: str, restart: bool) -> bool:
    """The one case that must wait for a lease: no claim of the event completed, the
    owner gone with no one knowing (a restart: the observer that abandoned the claims
    forgot them), and the event id's claim (the one a retry meets first) within its
    lease. Its event may be stored: only the history can tell, and it is read once the
    owner is presumed dead (reading it for every pending claim met would read long
    sessions whole under load)."""
    return restart and "completed" not in (e_state, k_state) and e_state == "pending"


@pytest.mark.parametrize(
    ("e_state", "k_state", "stored", "restart"),
    CASES,
    ids=[
        f"id-{e}-key-{k}-{'stored' if s else 'unstored'}-{'restart' if r else 'same'}"
        for e, k, s, r in CASES
    ],
)
async def test_every_state_of_an_event_s_two_claims_converges(
    nats_server: Server,
    monkeypatch: pytest.MonkeyPatch,
    e_state: str,
    k_state: str,
    stored: bool,
    restart: bool,
) -> None:
    """An event with an id and an idempotency key whose first attempt failed: before
    or after its append (``stored``), its two claims left pending, abandoned by the
    observer that made them. Each claim is then pending (its owner's lease running),
    completed or expired, and the observer restarts or not. The retry, a new id under
    the key and the id alone all answer the one stored event (appended now if it was
    not), at once unless only a lease can tell (then within it); both claims end
    completed; the event is stored once."""
    p = pid()
    e = event(p, "step", event_id="two-claims", idempotency_key="k-two-claims")
    keys = {"e": claim_key("e", p, e.event_id), "k": claim_key("k", p, e.idempotency_key)}
    owner = await _observer(nats_server)
    observers = [owner]
    try:
        before = await first_attempt_fails(owner, e, stored, monkeypatch)
        claims = owner.recorder._claims
        for kind, state in (("e", e_state), ("k", k_state)):
            got = await claims.get(keys[kind])
            assert got is not None and not got[0].done
            if state == "completed":
                [r] = before
                value = ClaimValue(e.event_id, now_ns(), r.stream_seq, r.version, r.recorded_at_ns)
            elif state == "expired":
                value = replace(got[0], since_ns=now_ns() - int(2 * LEASE_S * 1e9))
            else:
                continue  # pending: as the failed request left it
            await claims.put(keys[kind], value)

        asker = owner
        if restart:
            await owner.stop(1.0)
            asker = await _observer(nats_server)
            observers.append(asker)
        rekeyed = event(p, "step", event_id="two-claims-again", idempotency_key=e.idempotency_key)
        by_id = event(p, "step", event_id=e.event_id)
        waits = _waits_out_a_lease(e_state, k_state, restart)
        answers, took = await asked_in_turn(asker, [e, rekeyed, by_id], waits)
        await one_event_answered(asker, e, keys, answers, [stored, True, True], took)
    finally:
        for o in observers:
            await o.stop(1.0)
