"""Two asyncio helpers that do not lose a cancellation.

On Python 3.11, ``asyncio.wait_for(x, t)`` returns ``x``'s result when ``x`` completes
in the same loop iteration as its own task is cancelled, and the cancellation is gone:
a background loop written as ``while True: await wait_for(event.wait(), t)`` then
outlives the ``task.cancel(); await task`` meant to stop it, and the stop hangs (CI
once waited 300 s in a publisher's teardown on exactly this). nats-py and other
libraries use ``wait_for`` inside, so one ``cancel()`` is not always enough either.

- :func:`wait_event` waits for an event with a timeout through ``asyncio.timeout``,
  which counts cancellations and never swallows one that is not its own.
- :func:`wait_for` is ``asyncio.wait_for`` without that flaw (services/ may not call
  ``asyncio.wait_for``: ruff's TID251 refuses it).
- :func:`stop_task` cancels a task and waits for it, cancelling again while it still
  runs, within a bound (and says so when the bound passes).
- :func:`honour_cancel` raises a cancellation a library below swallowed, for loops.
- :func:`run` is ``asyncio.run`` for the CLI and the services: the tasks its
  coroutine leaves running are stopped with :func:`stop_task` before asyncio.run's own
  teardown, which cancels each once and waits for it without a bound (a service that
  could not listen once hung there for ever, its stream follower having lost that
  one cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

RECANCEL_EVERY_S = 0.05
# How long the tasks a coroutine run by :func:`run` leaves behind get to end.
STOP_LEFTOVERS_S = 5.0
EXIT_LEFT_RUNNING = 1

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True when ``event`` is set within ``timeout`` seconds, False when not. A
    cancellation of the caller always propagates."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for(aw, timeout)``: ``aw``'s result, or its exception; on timeout
    ``aw`` is cancelled, waited for, and TimeoutError raised (its result returned when
    it swallowed that cancel and returned anyway, as asyncio.wait_for does). ``aw``
    runs in a task of its own, as with asyncio.wait_for (``timeout=None``: awaited
    directly). But a cancellation of the caller is never lost: not when it arrives in
    the loop turn ``aw`` completes (asyncio.wait_for on Python 3.11 then returns the
    result and drops it), nor when ``aw`` swallows it and returns (CancelledError is
    raised then). A cancellation the caller carried already on entry is left alone.
    A result (or error) ``aw`` reached in the loop turn the time ran out is kept, as
    asyncio.wait_for on 3.11 keeps it (a queue item taken is not dropped). Unlike 3.11's
    (and as 3.12's), a second cancel of the caller does not leave ``aw`` behind: each
    is passed on to it, and the caller ends when it does."""
    me = asyncio.current_task()
    before = me.cancelling() if me is not None else 0
    fut: asyncio.Future[T] | None = None
    try:
        if timeout is None:
            result = await aw
        else:
            fut = asyncio.ensure_future(aw)
            if timeout > 0:
                try:
                    async with asyncio.timeout(timeout):  # counts cancels: keeps the caller's
                        result = await fut  # the caller's cancel cancels fut, waits for it
                except TimeoutError:
                    if not fut.done() or fut.cancelled():
                        raise
                    result = fut.result()  # done in the turn the time ran out: kept
            elif fut.done():
                result = fut.result()
            else:  # as asyncio.wait_for: cancelled before it ran, then TimeoutError
                fut.cancel()
                await asyncio.wait({fut})
                try:
                    result = fut.result()
                except asyncio.CancelledError as exc:
                    raise TimeoutError from exc
    except asyncio.CancelledError:
        if fut is not None and fut.done() and not fut.cancelled():
            fut.exception()  # done as the cancel came: retrieved, not logged
        raise
    except Exception as exc:
        if me is not None and me.cancelling() > before:  # it failed as it was cancelled
            raise asyncio.CancelledError from exc
        raise
    if me is not None and me.cancelling() > before:
        raise asyncio.CancelledError  # came meanwhile, swallowed below: honoured
    return result


async def stop_task(task: asyncio.Task[Any] | None, bound: float = 5.0) -> bool:
    """Cancel ``task`` and wait until it has ended, cancelling again every
    :data:`RECANCEL_EVERY_S` while it runs (a library below may have swallowed the
    first). True when it ended within ``bound`` seconds; False, with a warning, when
    it is left behind. Its result or exception is retrieved and dropped."""
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not task.done():
        task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            log.warning("task %s did not stop within %.1f s; left behind", task.get_name(), bound)
            return False
        await asyncio.wait({task}, timeout=min(RECANCEL_EVERY_S, left))
    with contextlib.suppress(BaseException):
        task.result()
    return True


def honour_cancel() -> None:
    """Raise CancelledError when the calling task was cancelled and a library below
    swallowed it: a background loop asks this each time round, so one lost cancel does
    not keep it running for ever."""
    me = asyncio.current_task()
    if me is not None and me.cancelling():
        raise asyncio.CancelledError


async def stop_others(bound: float) -> list[asyncio.Task[Any]]:
    """Stop every task of the running loop but the caller's, all at once, each with
    :func:`stop_task`; returns the ones still running after ``bound`` seconds."""
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    stopped = await asyncio.gather(*(stop_task(t, bound) for t in rest))
    return [t for t, ok in zip(rest, stopped, strict=True) if not ok]


def run(main: Coroutine[Any, Any, T], bound: float | None = None) -> T:
    """``asyncio.run(main)``: its result, or its exception raised; the tasks ``main``
    leaves running are stopped first (:func:`stop_others`). A task that outlives
    ``bound`` seconds (default :data:`STOP_LEFTOVERS_S`) of cancels would hang
    asyncio.run's teardown: the process ends instead, naming it on stderr, with exit
    code :data:`EXIT_LEFT_RUNNING`."""

    async def guarded() -> T:
        _running.append(asyncio.current_task())
        try:
            return await main
        finally:
            left = await stop_others(STOP_LEFTOVERS_S if bound is None else bound)
            if left:
                names = ", ".join(sorted(t.get_name() for t in left))
                log.error("tasks that did not stop when cancelled: %s; exiting", names)
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.write(f"jetsource: tasks that did not stop: {names}\n")
                sys.stderr.flush()
                os._exit(EXIT_LEFT_RUNNING)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if _interrupted:  # interrupt() cancelled it: Ctrl-C, as asyncio.run says it
            raise KeyboardInterrupt from None
        raise
    finally:
        _running.clear()
        _interrupted.clear()


# The main task of the :func:`run` under way, and whether :func:`interrupt` stopped it.
_running: list[asyncio.Task[Any] | None] = []
_interrupted: list[bool] = []


def interrupt() -> bool:
    """Stop the :func:`run` under way as Ctrl-C stops asyncio.run (its main task
    cancelled, then KeyboardInterrupt raised from :func:`run`), for a signal handler
    where asyncio.run put none of its own (SIGINT ignored: a job a script started with
    ``&``). False when none runs or it was interrupted already: the caller raises
    KeyboardInterrupt itself, as asyncio.run does on a second Ctrl-C."""
    task = _running[-1] if _running else None
    if task is None or task.done() or _interrupted:
        return False
    _interrupted.append(True)
    task.get_loop().call_soon_threadsafe(task.cancel)  # wakes the loop's select too
    return True
