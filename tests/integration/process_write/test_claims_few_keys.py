"""The claims of a request with a few keys are written as single KV creates and puts
(pipelined), not as atomic batches: on an R1 file-storage stream every atomic batch is
staged in a file store of its own on the server (created, flushed, deleted), a few ms
each, where a single publish is ~0.1 ms. Many keys, and events with two keys (an id and
an idempotency key: their claims must stay all-or-none per event), keep the batch.
The answers per key are the batch's: a key claimed already is reported as such."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from jetsource.core.clock import now_ns
from jetsource.domains.process.claims import ClaimValue, KvClaims, claim_key
from jetsource.eventstore import jsapi
from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import event, history

pytestmark = pytest.mark.integration


@pytest.fixture
def kv_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the atomic batches published to a KV bucket (the claims)."""
    sizes: list[int] = []
    publish = jsapi.publish_atomic_batch

    async def counting(
        replies: jsapi.Replies, messages: Sequence[jsapi.OutMessage], *args: Any
    ) -> jsapi.PubAck:
        if messages and messages[0].subject.startswith("$KV."):
            sizes.append(len(messages))
        return await publish(replies, messages, *args)

    monkeypatch.setattr(jsapi, "publish_atomic_batch", counting)
    return sizes


@pytest.fixture
async def claims(nc: NATS) -> AsyncIterator[KvClaims]:
    bucket = f"CLAIMS_TEST_{uuid.uuid4().hex[:8]}"
    claims = KvClaims(nc, bucket)
    yield claims
    if claims._kv is not None:
        await nc.jetstream().delete_key_value(bucket)


def _pid() -> str:
    return f"few-{uuid.uuid4().hex[:10]}"


async def test_a_record_batch_of_three_events_writes_its_claims_without_an_atomic_batch(
    observer: Observer, kv_batches: list[int]
) -> None:
    """Three events with ids: three single creates before the append and three single
    puts after it (it was two atomic batches: the creates' and the completions')."""
    p = _pid()
    events = [event(p, "step", event_id=f"few-{i}-{p}") for i in range(3)]
    recorded = await observer.recorder.record(events)
    await observer.recorder.flush()
    assert kv_batches == []
    assert [r.duplicate for r in recorded] == [False, False, False]
    for e, r in zip(events, recorded, strict=True):
        got = await observer.recorder._claims.get(claim_key("e", p, e.event_id))
        assert got is not None and got[0].done
        assert (got[0].event_id, got[0].global_seq) == (e.event_id, r.global_seq)
    again = await observer.recorder.record(events)
    assert [(r.duplicate, r.global_seq) for r in again] == [(True, r.global_seq) for r in recorded]
    assert [r.event_id for r in await history(observer.store, p)] == [e.event_id for e in events]


async def test_an_event_with_an_id_and_a_key_keeps_its_claims_in_one_batch(
    observer: Observer, kv_batches: list[int]
) -> None:
    """Its two claims are created together or not at all (a crash between two single
    creates would leave one pending and the other absent: not a state the recorder
    resolves); their completion may go one by one (each claim completed or pending is)."""
    p = _pid()
    [r] = await observer.recorder.record([event(p, "step", event_id="both", idempotency_key="k")])
    await observer.recorder.flush()
    assert kv_batches == [2]
    for kind, value in (("e", "both"), ("k", "k")):
        got = await observer.recorder._claims.get(claim_key(kind, p, value))
        assert got is not None and got[0].done and got[0].global_seq == r.global_seq


async def test_a_key_claimed_already_is_reported_as_such_among_fresh_ones(
    claims: KvClaims, kv_batches: list[int]
) -> None:
    now = now_ns()
    taken = await claims.create("taken", ClaimValue("other", now))
    assert taken is not None
    released = await claims.create("released", ClaimValue("gone", now))
    assert released is not None
    await claims.delete("released", released)  # a tombstone: free to claim again
    pairs = [(k, ClaimValue(f"ev-{k}", now)) for k in ("a", "taken", "released", "b")]
    revisions = await claims.create_many(pairs)
    assert kv_batches == []
    assert revisions[1] is None
    assert all(isinstance(r, int) and r > taken for i, r in enumerate(revisions) if i != 1)
    for (key, value), revision in zip(pairs, revisions, strict=True):
        got = await claims.get(key)
        assert got is not None
        if revision is None:
            assert got[0] == ClaimValue("other", now)
        else:
            assert got == (value, revision)


async def test_many_keys_stay_one_atomic_batch(claims: KvClaims, kv_batches: list[int]) -> None:
    now = now_ns()
    n = KvClaims.SINGLE_WRITES_UP_TO + 1
    pairs = [(f"many-{i}", ClaimValue(f"ev-{i}", now)) for i in range(n)]
    revisions = await claims.create_many(pairs)
    assert [r is not None for r in revisions] == [True] * n
    await claims.put_many([(k, ClaimValue(v.event_id, now, 1, 1, now)) for k, v in pairs])
    assert kv_batches == [n, n]
    for key, _ in pairs:
        got = await claims.get(key)
        assert got is not None and got[0].done


async def test_few_completions_are_single_puts(claims: KvClaims, kv_batches: list[int]) -> None:
    now = now_ns()
    pairs = [(f"put-{i}", ClaimValue(f"ev-{i}", now)) for i in range(3)]
    assert None not in await claims.create_many(pairs)
    await claims.put_many([(k, ClaimValue(v.event_id, now, 7, 1, now)) for k, v in pairs])
    assert kv_batches == []
    for key, _ in pairs:
        got = await claims.get(key)
        assert got is not None and got[0].global_seq == 7
