"""The deadline of the call being served, for the waits below it.

A gRPC handler bounds its work with ``asyncio.timeout(budget)``: when that fires, the
call is answered DEADLINE_EXCEEDED "deadline exceeded", naming nothing. A wait deep
below it (a publish waiting for the stream's acknowledgement, up to
``request_timeout_s``) does not know the budget, so the budget could end inside it
and the cause (say a NATS cluster that lost quorum) was never said. The handler sets
the deadline here (:func:`within`); such a wait ends before it (:func:`left`) and
raises an error that names what did not answer.

A wait that the deadline ended is :class:`DeadlineCutError` (DEADLINE_EXCEEDED naming
what was in flight), not a sign that the store is down: only an answer that says so
(a stream without a leader, or whose leader lost quorum) is. Tasks that outlive the
call are started without it (:func:`spawn`, :func:`detached`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Coroutine, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from jetsource.core.errors import DeadlineCutError

T = TypeVar("T")

_DEADLINE: ContextVar[float | None] = ContextVar("jetsource_deadline", default=None)


@contextlib.contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """The code inside (and the tasks it starts and awaits: ``gather``) answers within
    ``seconds`` (None: no deadline). An outer, earlier deadline stays."""
    if seconds is None:
        yield
        return
    at = asyncio.get_running_loop().time() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(at if outer is None else min(outer, at))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def left() -> float | None:
    """Seconds left to the deadline of the call being served (may be negative); None
    when there is none."""
    at = _DEADLINE.get()
    if at is None:
        return None
    return at - asyncio.get_running_loop().time()


# Of the time left to a call's deadline, a wait below it leaves a share to answer the
# call naming what did not answer: a tenth, at most ANSWER_RESERVE_S. It was a fixed
# 0.3 s, so under a 2 s deadline a healthy publish acknowledged in 1.65 s was cut.
RESERVE_SHARE = 0.1
ANSWER_RESERVE_S = 0.3
# A retry is worth sending only with at least this long for it (``_time_for`` of the
# event store); a single wait is not made longer than the deadline allows for it.
MIN_WAIT_S = 0.5
# Less than this left for a wait: it is not sent at all (DeadlineCutError at once).
LEAST_WAIT_S = 0.005


def reserve(remaining: float) -> float:
    """What a wait leaves of ``remaining`` seconds to answer the call."""
    return min(max(remaining, 0.0) * RESERVE_SHARE, ANSWER_RESERVE_S)


def bound(timeout: float) -> float:
    """``timeout`` for one wait, cut to end before the deadline of the call being
    served (keeping :func:`reserve` of the time left); may be 0 or less when the
    deadline is (nearly) spent. It was never less than 0.5 s, so a wait started late
    in a call ended past its deadline (a bare DEADLINE_EXCEEDED)."""
    remaining = left()
    if remaining is None:
        return timeout
    return min(timeout, remaining - reserve(remaining))


def wait(timeout: float, what: str) -> tuple[float, bool]:
    """(the wait for ``what``: ``timeout`` or less, whether the call's deadline cut
    it); DeadlineCutError when no time is left for it at all."""
    cut = bound(timeout)
    if cut >= timeout:
        return timeout, False
    if cut < LEAST_WAIT_S:
        raise DeadlineCutError(f"the call's deadline came before {what} could be awaited")
    return cut, True


def cut_short(what: str, waited: float) -> DeadlineCutError:
    """The error of a wait for ``what`` that the call's deadline ended."""
    return DeadlineCutError(f"the call's deadline ended the wait for {what} after {waited:.2f} s")


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """The code inside (and the tasks and subscriptions it starts, which outlive the
    call) has no deadline: a task copies the context it is started in, and so kept the
    call's deadline after the call ended."""
    token = _DEADLINE.set(None)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def spawn(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """``asyncio.create_task(coro)`` without the deadline of the call being served: a
    task that may outlive the call (one shared by several calls, a background loop)."""
    context = contextvars.copy_context()
    context.run(_DEADLINE.set, None)
    return asyncio.get_running_loop().create_task(coro, name=name, context=context)
