"""An event whose id's claim exists (pending with its owner gone, expired or completed)
and whose idempotency key's claim is absent, on a real NATS: the state a refused batch
of claims leaves when ``create_many``'s one-by-one fallback stops part-way (a crash, or
a key's create that never reached the server). The retry stores the event once and
claims the key for it, so a later request with another event under the key answers the
stored event and appends nothing. The retry used to release the key's claim it made
(as if the key were another event's) and take the id's over alone: the key ended
unclaimed and the next event under it was appended too."""

from __future__ import annotations

from dataclasses import replace

import pytest

from jetsource.core.clock import now_ns
from jetsource.domains.process.claims import ClaimValue, claim_key
from tests.infra import Server
from tests.integration.process_write.helpers import event
from tests.integration.process_write.test_claim_takeover import (
    LEASE_S,
    _observer,
    asked_in_turn,
    first_attempt_fails,
    one_event_answered,
    pid,
)

pytestmark = pytest.mark.integration

CASES = [
    (absent, state, stored, restart)
    for absent in ("key", "id")
    for state in ("pending", "expired", "completed")
    for stored in (True, False)
    if stored or state != "completed"  # a completed claim holds a stored event's positions
    for restart in (False, True)
]


@pytest.mark.parametrize(
    ("absent", "state", "stored", "restart"),
    CASES,
    ids=[
        f"{'id' if a == 'key' else 'key'}-{st}-{a}-absent-"
        f"{'stored' if s else 'unstored'}-{'restart' if r else 'same'}"
        for a, st, s, r in CASES
    ],
)
async def test_one_claim_of_an_event_without_the_other_converges(
    nats_server: Server,
    monkeypatch: pytest.MonkeyPatch,
    absent: str,
    state: str,
    stored: bool,
    restart: bool,
) -> None:
    """The first attempt of X (an id and a key) claims both, then its append fails
    before or after storing X (``stored``): both claims pending, abandoned. One claim
    (``absent``: the key's, the defect found; or the id's) is then removed from the
    bucket (no message left on its subject: a create that never reached the server);
    the other is left pending, made expired or completed; the observer restarts or
    not. The retry of X, then Y (another event under X's key), then X's id alone all
    answer X's one stored event (the retry appends it if it was not); both claims end
    completed naming X."""
    p = pid()
    x = event(p, "step", event_id="x-key-absent", idempotency_key="k-key-absent")
    keys = {"e": claim_key("e", p, x.event_id), "k": claim_key("k", p, x.idempotency_key)}
    owner = await _observer(nats_server)
    observers = [owner]
    try:
        before = await first_attempt_fails(owner, x, stored, monkeypatch)

        claims = owner.recorder._claims
        bucket = "PROCESS_IDEMPOTENCY"
        gone, kept = (keys["k"], keys["e"]) if absent == "key" else (keys["e"], keys["k"])
        await owner.nc.jetstream().purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{gone}")
        assert await claims.get(gone) is None
        got = await claims.get(kept)
        assert got is not None and not got[0].done
        if state == "completed":
            [r] = before
            await claims.put(
                kept, ClaimValue(x.event_id, now_ns(), r.stream_seq, r.version, r.recorded_at_ns)
            )
        elif state == "expired":
            await claims.put(kept, replace(got[0], since_ns=now_ns() - int(2 * LEASE_S * 1e9)))

        asker = owner
        if restart:
            await owner.stop(1.0)
            asker = await _observer(nats_server)
            observers.append(asker)
        y = event(p, "step", event_id="y-key-absent", idempotency_key=x.idempotency_key)
        by_id = event(p, "step", event_id=x.event_id)
        # Only the retry after a restart, meeting the claim within its lease, waits it
        # out (the owner is gone with no one knowing).
        waits = restart and state == "pending"
        answers, took = await asked_in_turn(asker, [x, y, by_id], waits)
        await one_event_answered(asker, x, keys, answers, [stored, True, True], took)
    finally:
        for o in observers:
            await o.stop(1.0)
