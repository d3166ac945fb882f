"""The event store's append_many (one atomic batch across aggregates), which the
observer's batcher uses: stored contiguously and in order, a moved aggregate or a
resent batch falls back to per-aggregate appends (nothing lost or doubled), and a
refused group stores nothing of the batch."""

from __future__ import annotations

import uuid

import pytest

from jetsource.core.envelope import ANY, NewEvent
from jetsource.core.errors import EventTooLargeError, ValidationError
from jetsource.domains.process.descriptor import _body
from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import last_seq

pytestmark = pytest.mark.integration


def news(n: int, tag: str) -> list[NewEvent]:
    return [NewEvent(_body(i=i, tag=tag), event_type="step") for i in range(n)]


async def test_append_many_stores_every_group_in_one_batch(observer: Observer) -> None:
    store = observer.store
    a, b, c = (f"am-{uuid.uuid4().hex[:8]}" for _ in range(3))
    await store.append(a, news(2, "before"), ANY)
    results = await store.append_many([(a, news(3, "a")), (b, news(1, "b")), (c, news(2, "c"))])
    assert [r.versions for r in results] == [[3, 4, 5], [1], [1, 2]]
    seqs = [s for r in results for s in r.stream_seqs]
    assert seqs == list(range(seqs[0], seqs[0] + 6)), "one atomic batch: consecutive"
    assert [r.version for r in await store.read_aggregate(a)] == [1, 2, 3, 4, 5]


async def test_a_moved_aggregate_or_a_resent_batch_falls_back_without_loss(
    observer: Observer,
) -> None:
    store = observer.store
    a, b = (f"am-{uuid.uuid4().hex[:8]}" for _ in range(2))
    await store.append(a, news(1, "x"), ANY)
    await store.append(b, news(1, "x"), ANY)
    # another writer moves `a` behind this store's back (its cached position is stale)
    store._positions[a] = (1, (await store.read_aggregate(a))[-1].stream_seq)
    other = [NewEvent(_body(i=99), event_type="other")]
    await store.append(a, other, ANY)
    store._positions[a] = (1, (await store.read_aggregate(a))[0].stream_seq)
    groups = [(a, news(2, "a")), (b, news(2, "b"))]
    results = await store.append_many(groups)
    assert [r.versions for r in results] == [[3, 4], [2, 3]]
    before = await last_seq(store)
    again = await store.append_many(groups)  # a lost ack: the same ids again
    assert [r.versions for r in again] == [[3, 4], [2, 3]] and all(r.duplicate for r in again)
    assert await last_seq(store) == before


async def test_append_many_refuses_a_bad_batch_and_stores_nothing(observer: Observer) -> None:
    store = observer.store
    a = f"am-{uuid.uuid4().hex[:8]}"
    before = await last_seq(store)
    with pytest.raises(ValidationError):
        await store.append_many([(a, news(1, "a")), (a, news(1, "a"))])
    huge = [NewEvent(_body(blob="x" * (store.settings.max_msg_size + 10)), event_type="big")]
    with pytest.raises(EventTooLargeError) as caught:
        await store.append_many([(a, news(2, "a")), (f"{a}-2", news(1, "b") + huge)])
    # Its place among all the batch's events (it was 1, its place in its group: the
    # caller could not tell which event).
    assert caught.value.index == 3
    assert str(caught.value).startswith(f"{a}-2: event 1 (big)")
    assert await last_seq(store) == before
