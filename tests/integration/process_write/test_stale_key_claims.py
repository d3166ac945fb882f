"""Stale and unreleased claims of a key on a real NATS (the observer in this process,
its claims bucket; the states made by hand or by a refused delete).

- a recorded under K1; a stopped duplicate ``(a, K3)`` left K3's claim pending naming
  a, and a's id claim is missing. ``(a, K3)`` took K3's claim over, found a stored and
  completed K3 for a, which never carried K3: ``(d, K3)`` was answered as a and d was
  never recorded. K3's claim is released now.
- ``(a, K3)`` after ``(a, K1)`` and ``(d, K3)`` while the claims bucket refuses deletes:
  both fail, d's id claim and K3's claim left pending. d's retry took d's id claim over
  and appended d under K3 with K3's claim still naming a; that claim was then released
  for ``(x, K3)``, a second event under K3. Now d's retry claims K3 too."""

from __future__ import annotations

import time

import pytest

from jetsource.core.errors import EventStoreUnavailableError
from jetsource.domains.process.claims import ClaimValue, KvClaims, claim_key
from jetsource.observer.server import build
from tests.infra import Server
from tests.integration.process_write.conftest import observer_settings
from tests.integration.process_write.helpers import event, history
from tests.integration.process_write.test_claim_takeover import pid

pytestmark = pytest.mark.integration


async def test_a_stale_key_claim_of_the_event_itself_is_released(nats_server: Server) -> None:
    p = pid()
    first = await build(observer_settings(nats_server))
    try:
        [a] = await first.recorder.record([event(p, event_id="a", idempotency_key="K1")])
        await first.recorder.flush()
        claims = first.recorder._claims
        got = await claims.get(claim_key("e", p, "a"))
        assert got is not None
        await claims.delete(claim_key("e", p, "a"), got[1])
        stale = ClaimValue("a", time.time_ns() - 120 * 10**9)  # past the lease
        await claims.put(claim_key("k", p, "K3"), stale)
    finally:
        await first.stop(1.0)
    second = await build(observer_settings(nats_server))
    try:
        [again] = await second.recorder.record([event(p, event_id="a", idempotency_key="K3")])
        await second.recorder.flush()
        assert again.duplicate and again.global_seq == a.global_seq
        claims = second.recorder._claims
        assert await claims.get(claim_key("k", p, "K3")) is None  # before: done for a
        [d] = await second.recorder.record([event(p, event_id="d", idempotency_key="K3")])
        await second.recorder.flush()
        assert not d.duplicate and d.event_id == "d" and d.process_seq == 2  # before: a's
        stored = [(r.event_id, r.envelope.idempotency_key) for r in await history(second.store, p)]
        assert stored == [("a", "K1"), ("d", "K3")]
    finally:
        await second.stop(1.0)


async def test_a_refused_release_leaves_the_key_to_one_event(
    nats_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pid()
    o = await build(observer_settings(nats_server, claim_lease_s=1.0))
    try:
        [a] = await o.recorder.record([event(p, event_id="a", idempotency_key="K1")])
        await o.recorder.flush()

        async def refused(self: KvClaims, key: str, revision: int) -> None:
            raise EventStoreUnavailableError("the claims bucket did not answer (delete)")

        with monkeypatch.context() as m:
            m.setattr(KvClaims, "delete", refused)
            with pytest.raises(EventStoreUnavailableError):
                await o.recorder.record([event(p, event_id="a", idempotency_key="K3")])
            with pytest.raises(EventStoreUnavailableError):
                await o.recorder.record([event(p, event_id="d", idempotency_key="K3")])
        started = time.monotonic()
        [d] = await o.recorder.record([event(p, event_id="d", idempotency_key="K3")])
        took = time.monotonic() - started
        [x] = await o.recorder.record([event(p, event_id="x", idempotency_key="K3")])
        [a3] = await o.recorder.record([event(p, event_id="a", idempotency_key="K3")])
        await o.recorder.flush()
        assert a3.duplicate and a3.global_seq == a.global_seq
        assert not d.duplicate and d.event_id == "d"
        assert x.duplicate and x.event_id == "d"  # before: x recorded too
        assert took < 0.9  # before: the lease (1 s here, 60 s by default)
        stored = [(r.event_id, r.envelope.idempotency_key) for r in await history(o.store, p)]
        assert stored == [("a", "K1"), ("d", "K3")]
        got = await o.recorder._claims.get(claim_key("k", p, "K3"))
        assert got is not None and got[0].event_id == "d" and got[0].done
    finally:
        await o.stop(1.0)
