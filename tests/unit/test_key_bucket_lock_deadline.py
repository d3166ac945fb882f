"""The key store's bucket is made by the first call that needs a key (its first
personal field), under ``_lock``. A call waiting on that lock while another call
creates the bucket (a cluster without a meta leader: asked again for up to
PLACEMENT_WAIT_S, 15 s) waited for as long as that took, past its own deadline: a
bare DEADLINE_EXCEEDED. It waits within its deadline now (DeadlineCutError naming the
bucket). A fake connection that never answers: a cluster that cannot place the
bucket cannot be made on a real single nats-server within a unit test's time."""

from __future__ import annotations

import asyncio
import contextlib

from jetsource.core import deadline
from tests.unit.test_deadline_waits import _ends_before, _silent, _store


async def test_a_call_behind_another_calls_bucket_create_ends_within_its_deadline() -> None:
    store = _store(_silent)
    # The first key of a process: it makes the bucket (no deadline of its own).
    creating = asyncio.create_task(store.keys._create("pepper", b"p"))
    try:
        await asyncio.sleep(0.05)
        assert store.keys._lock.locked()  # it is creating the bucket
        cut = await _ends_before(0.5, lambda: store.keys._create("k.r1", b"k"))
        assert "bucket" in str(cut) and "another call" in str(cut), cut
        assert not creating.done()
    finally:
        creating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await creating
    assert not store.keys._lock.locked()  # the cut waiter took nothing with it


async def test_the_lock_is_taken_at_once_when_free_under_a_deadline() -> None:
    store = _store(_silent)
    with deadline.within(1.0):
        await store.keys._locked()
    assert store.keys._lock.locked()
    store.keys._lock.release()
