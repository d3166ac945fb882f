"""The deadline of the call being served, for the waits below it.

A gRPC handler bounds its work with ``asyncio.timeout(budget)``: when that fires, the
call is answered DEADLINE_EXCEEDED "deadline exceeded", naming nothing. A wait deep
below it (a publish waiting for the stream's acknowledgement, up to
``request_timeout_s``) does not know the budget, so the budget could end inside it
and the cause (say a NATS cluster that lost quorum) was never said. The handler sets
the deadline here (:func:`within`); such a wait ends before it (:func:`left`) and
raises an error that names what did not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("jetsource_deadline", default=None)


@contextlib.contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """The code inside (and the tasks it starts) answers within ``seconds`` (None: no
    deadline). An outer, earlier deadline stays."""
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


# Of a call's deadline, a wait below it leaves this much to answer the call naming what
# did not answer; and waits at least this long (less is not worth asking: the caller's
# own timeout comes first, answered DEADLINE_EXCEEDED).
ANSWER_RESERVE_S = 0.3
MIN_WAIT_S = 0.5


def bound(timeout: float) -> float:
    """``timeout`` for one wait, cut to end before the deadline of the call being
    served (keeping :data:`ANSWER_RESERVE_S`), at least :data:`MIN_WAIT_S`."""
    remaining = left()
    if remaining is None:
        return timeout
    return min(timeout, max(remaining - ANSWER_RESERVE_S, MIN_WAIT_S))
