"""The cancellation-safe helpers: a cancel that arrives in the same loop iteration as
the awaited event is kept (Python 3.11's wait_for drops it, shown first), and
stop_task ends a task that swallowed its first cancel, or says it could not."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import pytest

from jetsource.core.aio import honour_cancel, stop_task, wait_event


async def _loop_until_cancelled(wait: str, event: asyncio.Event) -> int:
    rounds = 0
    while rounds < 5:
        if wait == "wait_for":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 10)
        else:
            await wait_event(event, 10)
        event.clear()
        rounds += 1
    return rounds  # only reached when a cancellation was lost


async def _race(wait: str) -> str:
    event = asyncio.Event()
    task = asyncio.create_task(_loop_until_cancelled(wait, event))
    await asyncio.sleep(0.01)
    event.set()  # the awaited event completes ...
    task.cancel()  # ... in the same iteration as the cancel
    done, _ = await asyncio.wait({task}, timeout=1)
    if not done:
        task.cancel()
        await asyncio.wait({task})
        return "hung"
    return "cancelled" if task.cancelled() else f"returned {task.result()}"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 rebuilt wait_for on timeout()")
async def test_wait_for_loses_a_cancel_that_races_its_event_on_311() -> None:
    assert await _race("wait_for") == "hung"  # the bug the helpers exist for


async def test_wait_event_keeps_a_cancel_that_races_its_event() -> None:
    assert await _race("wait_event") == "cancelled"


async def test_wait_event_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    assert await wait_event(event, 0.05) is False
    assert time.monotonic() - started >= 0.05
    asyncio.get_running_loop().call_later(0.02, event.set)
    assert await wait_event(event, 5) is True


async def test_stop_task_ends_a_task_that_swallows_its_first_cancels() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed >= 3:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await stop_task(task, bound=5) is True
    assert task.done() and swallowed == 3
    assert time.monotonic() - started < 1


async def test_stop_task_gives_up_within_its_bound_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alive = True

    async def immortal() -> None:
        while alive:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await stop_task(task, bound=0.3) is False
    assert 0.3 <= time.monotonic() - started < 1.5
    assert "immortal" in caplog.text and "left behind" in caplog.text
    alive = False  # the test's own clean-up: let it end
    task.cancel()
    await asyncio.wait({task})


async def test_a_loop_that_honours_cancel_stops_after_a_library_swallowed_it() -> None:
    """A loop whose await swallowed its cancel (as wait_for can) still ends at its
    next turn: honour_cancel raises it."""
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            honour_cancel()
            turns += 1
            with contextlib.suppress(asyncio.CancelledError):  # as a library below can
                await asyncio.sleep(10)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled() and turns == 1
