"""aio.wait_for: asyncio.wait_for's contract (result, TimeoutError with the awaitable
cancelled, timeout None and <= 0), but a cancellation of the caller is never lost.
On Python 3.11 asyncio.wait_for returns the result when it completes in the same loop
turn as the caller is cancelled, and the cancel is gone (shown first)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from jetsource.core import aio

WaitFor = Callable[[Awaitable[Any], float | None], Awaitable[Any]]


async def _same_turn(wait_for: WaitFor) -> str:
    """The caller awaits ``wait_for(inner, 5)``; the inner's result and the caller's
    cancel arrive in one loop turn. What the caller saw."""
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def inner() -> str:
        return await answer

    async def caller() -> str:
        got = await wait_for(inner(), 5)
        return f"returned {got}"

    task = asyncio.create_task(caller())
    for _ in range(3):
        await asyncio.sleep(0)  # the caller waits inside wait_for
    answer.set_result("x")  # the result ...
    task.cancel()  # ... and the cancel, in the same turn
    try:
        return await asyncio.wait_for(task, 2)  # the bound of this test
    except asyncio.CancelledError:
        return "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for kept it from 3.12")
async def test_asyncio_wait_for_drops_a_cancel_that_comes_with_the_result() -> None:
    assert await _same_turn(asyncio.wait_for) == "returned x"


async def test_a_cancel_that_comes_with_the_result_is_kept() -> None:
    assert await _same_turn(aio.wait_for) == "cancelled"


async def test_a_cancel_the_awaitable_swallows_is_raised() -> None:
    """nats-py and others catch a cancellation and return: the caller still ends."""
    entered = asyncio.Event()

    async def swallowing() -> str:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    task = asyncio.create_task(aio.wait_for(swallowing(), 5))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_result_exception_and_none() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("no")

    assert await aio.wait_for(value(), 1) == 7
    assert await aio.wait_for(value(), None) == 7
    with pytest.raises(ValueError, match="no"):
        await aio.wait_for(failing(), 1)


async def test_timeout_cancels_the_awaitable_and_waits_for_it() -> None:
    ended: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.01)  # its clean-up, done before wait_for returns
            ended.append("cleaned up")

    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await aio.wait_for(slow(), 0.05)
    assert ended == ["cleaned up"]
    assert asyncio.get_running_loop().time() - started < 1
    task = asyncio.ensure_future(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await aio.wait_for(task, 0.01)
    assert task.cancelled()


async def test_a_timeout_the_awaitable_swallows_returns_its_result() -> None:
    """As asyncio.wait_for: it returned anyway, so its result is the answer."""

    async def swallowing() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "late"
        return "slept"

    assert await aio.wait_for(swallowing(), 0.01) == "late"


async def test_zero_timeout() -> None:
    """As asyncio.wait_for: a coroutine is cancelled before it runs; a done future's
    result is returned."""
    ran: list[bool] = []

    async def work() -> int:
        ran.append(True)
        return 1

    with pytest.raises(TimeoutError):
        await aio.wait_for(work(), 0)
    assert ran == []
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done.set_result(3)
    assert await aio.wait_for(done, 0) == 3


async def test_a_cancel_caught_before_is_left_alone() -> None:
    """Clean-up after a caught cancel (a bounded save on the way out) still works."""

    async def save() -> str:
        await asyncio.sleep(0)
        return "saved"

    async def caller() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return await aio.wait_for(save(), 1)
        return "slept"

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "saved"


async def test_an_outer_timeout_through_a_swallowed_cancel_is_a_timeout() -> None:
    async def swallowing() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await aio.wait_for(swallowing(), 5)


async def test_a_cancel_the_awaitable_turns_into_an_error_is_raised() -> None:
    """A clean-up that fails as it is cancelled: the caller, which suppresses errors
    (a bounded stop), is still cancelled."""
    entered = asyncio.Event()

    async def failing_on_cancel() -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("closed while stopping") from None

    async def caller() -> str:
        with contextlib.suppress(Exception):
            await aio.wait_for(failing_on_cancel(), 5)
        return "carried on"

    task = asyncio.create_task(caller())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _taken_as_time_runs_out(wait: Any) -> tuple[str, object]:
    """A queue item arrives in the loop turn wait_for's time runs out."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[str] = asyncio.Queue()
    due = loop.time() + 0.05

    def put() -> None:  # one turn before the timer is due; the turn runs past it
        q.put_nowait("ack")
        time.sleep(0.003)

    loop.call_at(due - 0.002, put)
    await asyncio.sleep(0)
    try:
        got = await wait(q.get(), due - loop.time())
    except TimeoutError:
        return ("timeout", q.qsize())
    return ("got", got)


async def test_a_result_reached_as_the_time_runs_out_is_kept() -> None:
    """asyncio.wait_for on 3.11 returns it; a wait_for that raised TimeoutError here
    would take the item from the queue and drop it (it did before)."""
    outs = [await _taken_as_time_runs_out(aio.wait_for) for _ in range(10)]
    assert ("timeout", 0) not in outs, outs
