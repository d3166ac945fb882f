"""Two asyncio helpers that do not lose a cancellation.

On Python 3.11, ``asyncio.wait_for(x, t)`` returns ``x``'s result when ``x`` completes
in the same loop iteration as its own task is cancelled, and the cancellation is gone:
a background loop written as ``while True: await wait_for(event.wait(), t)`` then
outlives the ``task.cancel(); await task`` meant to stop it, and the stop hangs (CI
once waited 300 s in a publisher's teardown on exactly this). nats-py and other
libraries use ``wait_for`` inside, so one ``cancel()`` is not always enough either.

- :func:`wait_event` waits for an event with a timeout through ``asyncio.timeout``,
  which counts cancellations and never swallows one that is not its own.
- :func:`stop_task` cancels a task and waits for it, cancelling again while it still
  runs, within a bound (and says so when the bound passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_EVERY_S = 0.05


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
