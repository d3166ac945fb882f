"""Two ways an accepted event was answered with another event's position and lost, on a
real NATS. Found by the model test (``test_model.py``, seed 3, about 1 run in 4 under
load): an event acknowledged with positions was not in the stream.

1. A request cancelled by its caller's deadline while its events waited in the
   batcher's queue marked their claims abandoned. Its retry took them over and queued
   the same events again, while the first copy was still queued and was written later.
2. The batcher merges the queued requests of a process into one append. With one of
   them stored already (the first copy above), the append was refused as a duplicate,
   and the store's look-up saw the group's *last* event at the aggregate's tail and
   answered the whole group as stored there: the others got the positions of the
   events before it, and were never appended.

Now the cancelled request's write goes on and settles the claims (the retry waits for
it), and a group stored in part is ``PartlyStoredError``, so each request is appended
on its own."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from jetsource.core.envelope import ANY, NewEvent
from jetsource.domains.process.claims import claim_key
from jetsource.domains.process.validation import Limits, to_new_event
from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import event, history
from tests.integration.process_write.test_claim_takeover import pid

pytestmark = pytest.mark.integration


def _new(e: object) -> NewEvent:
    return to_new_event(e, Limits(), "event")  # type: ignore[arg-type]


async def _queued(observer: Observer, n: int) -> None:
    for _ in range(1000):
        if len(observer.recorder._queue) >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{n} writes never queued")


async def _stored(observer: Observer, process_id: str) -> None:
    for _ in range(1000):
        if await observer.store.last_version(process_id):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{process_id} never stored")


async def _released_then_cancelled(
    release: asyncio.Event, request: asyncio.Task[object], steps: int
) -> None:
    """Let the held answer go, cancel ``request`` ``steps`` loop iterations later, and
    wait for it to end."""
    loop = asyncio.get_running_loop()

    def cancel_after(n: int) -> None:
        if n == 0:
            request.cancel()
        else:
            loop.call_soon(cancel_after, n - 1)

    release.set()
    cancel_after(steps)
    with contextlib.suppress(asyncio.CancelledError):
        await request


@pytest.mark.parametrize("where", ["queued", "being-written"])
async def test_a_request_cancelled_while_queued_is_written_once_and_its_retry_waits_for_it(
    observer: Observer, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    recorder = observer.recorder
    p = pid()
    x = event(p, "step", event_id="x")
    release = asyncio.Event()
    writing = asyncio.Event()
    if where == "queued":
        recorder._writing.add(p)  # a write of p in flight: what comes now queues
    else:  # taken by the batcher, its append not answered yet
        append = recorder._append

        async def slow(process_id: str, events: list[NewEvent]) -> object:
            writing.set()
            await release.wait()
            return await append(process_id, events)

        monkeypatch.setattr(recorder, "_append", slow)
    try:
        first = asyncio.create_task(recorder.record([x]))
        if where == "queued":
            await _queued(observer, 1)
        else:
            await asyncio.wait_for(writing.wait(), 5)
        first.cancel()  # the caller's deadline, while x waits
        with pytest.raises(asyncio.CancelledError):
            await first
        retry = asyncio.create_task(recorder.record([x]))
        await asyncio.sleep(0.3)
        # It waits for the first copy's write; it used to take the claim over and
        # queue x a second time.
        assert not retry.done()
        assert len(recorder._queue) == (1 if where == "queued" else 0), [
            q.events for q in recorder._queue
        ]
    finally:
        release.set()
        if where == "queued":
            recorder._writing.discard(p)
            recorder._kick()
    async with asyncio.timeout(10):
        [answer] = await retry
    await recorder.flush()
    [stored] = await history(observer.store, p)
    assert stored.event_id == "x"
    assert (answer.duplicate, answer.global_seq, answer.process_seq) == (
        True,
        stored.stream_seq,
        stored.version,
    )
    got = await recorder._claims.get(claim_key("e", p, "x"))
    assert got is not None and got[0].done and got[0].global_seq == stored.stream_seq


async def test_a_merged_append_stored_in_part_answers_each_request_where_its_events_are(
    observer: Observer,
) -> None:
    """Two requests' events of one process merged by the batcher, the second's stored
    already (another copy's append): the first's events are appended, not answered
    with the positions before the stored one."""
    recorder = observer.recorder
    p = pid()
    await observer.store.append(p, [_new(event(p, "process_started", event_id="s"))], ANY)
    a = _new(event(p, "step", event_id="a"))
    b = _new(event(p, "step", event_id="b"))
    stored_b = await observer.store.append(p, [b], ANY)  # b's other copy, stored
    recorder._writing.add(p)
    try:
        ours = asyncio.create_task(recorder._lanes([(p, [a], None)]))
        theirs = asyncio.create_task(recorder._lanes([(p, [b], None)]))
        await _queued(observer, 2)
    finally:
        recorder._writing.discard(p)
        recorder._kick()
    async with asyncio.timeout(10):
        [written_a] = await ours
        [written_b] = await theirs
    assert isinstance(written_a, list) and isinstance(written_b, list), (written_a, written_b)
    [(version_a, seq_a)] = written_a
    [(version_b, seq_b)] = written_b
    records = {r.event_id: r for r in await history(observer.store, p)}
    assert sorted(records) == ["a", "b", "s"]
    assert (version_a, seq_a) == (records["a"].version, records["a"].stream_seq)
    assert (version_b, seq_b) == (stored_b.versions[0], stored_b.stream_seqs[0])


@pytest.mark.parametrize("steps", range(8))
async def test_a_cancel_landing_as_the_write_is_answered_leaves_no_claim_hanging(
    observer: Observer, monkeypatch: pytest.MonkeyPatch, steps: int
) -> None:
    """The request is cancelled ``steps`` loop iterations after its write is released,
    so at some step the cancel and the write's answer land together. Whichever comes
    first, the claims are settled: the retry answers the stored event at once. At one
    step the outcome went to neither (the future cancelled, the callback not yet set),
    and every retry waited on the claim for ever."""
    recorder = observer.recorder
    p = pid()
    x = event(p, "step", event_id="x")
    release = asyncio.Event()
    append = recorder._append

    async def held(process_id: str, events: list[NewEvent]) -> object:
        result = await append(process_id, events)  # stored; the answer held back
        await release.wait()
        return result

    monkeypatch.setattr(recorder, "_append", held)
    first = asyncio.create_task(recorder.record([x]))
    await _stored(observer, p)
    await _released_then_cancelled(release, first, steps)
    async with asyncio.timeout(5):
        [answer] = await recorder.record([x])
    await recorder.flush()
    [stored] = await history(observer.store, p)
    assert (answer.event_id, answer.global_seq, answer.process_seq) == (
        "x",
        stored.stream_seq,
        stored.version,
    )
    got = await recorder._claims.get(claim_key("e", p, "x"))
    assert got is not None and got[0].done and got[0].global_seq == stored.stream_seq


@pytest.mark.parametrize("steps", range(6))
async def test_a_cancel_between_two_processes_answers_settles_both(
    observer: Observer, monkeypatch: pytest.MonkeyPatch, steps: int
) -> None:
    """A request of two processes whose writes go apart (a write of ``q`` in flight holds
    its events back): the cancel lands ``steps`` loop iterations after ``p``'s answer,
    while ``q``'s events still wait in the queue. ``p``'s outcome is handed on from its
    future, ``q``'s when its write comes; both claims are completed and a retry answers
    both at once."""
    recorder = observer.recorder
    p, q = pid(), pid()
    x, y = event(p, "step", event_id="x"), event(q, "step", event_id="y")
    release = asyncio.Event()
    append = recorder._append

    async def held(process_id: str, events: list[NewEvent]) -> object:
        result = await append(process_id, events)  # stored; the answer held back
        if process_id == p:
            await release.wait()
        return result

    monkeypatch.setattr(recorder, "_append", held)
    recorder._writing.add(q)  # a write of q in flight: q's events queue
    try:
        first = asyncio.create_task(recorder.record([x, y]))
        await _stored(observer, p)
        assert [it.process_id for it in recorder._queue] == [q]
        await _released_then_cancelled(release, first, steps)
    finally:
        recorder._writing.discard(q)
        recorder._kick()
    async with asyncio.timeout(5):
        answers = await recorder.record([x, y])
    await recorder.flush()
    for process_id, event_id, answer in zip((p, q), ("x", "y"), answers, strict=True):
        [stored] = await history(observer.store, process_id)
        assert (answer.event_id, answer.global_seq, answer.process_seq) == (
            event_id,
            stored.stream_seq,
            stored.version,
        )
        got = await recorder._claims.get(claim_key("e", process_id, event_id))
        assert got is not None and got[0].done and got[0].global_seq == stored.stream_seq
