"""A round trip to the NATS server that a timeout cannot break.

``nc.flush(timeout)`` sends a PING and waits for its PONG; when the wait times out, the
PONG that comes later (a hung server that resumes) finds its future cancelled and, on
nats-py 2.16, kills the client's read loop (an InvalidStateError in ``_process_pong``):
the connection then says connected and reads nothing until its stale-connection
check gives up, minutes later. So nothing here cancels a PING: a wait that times out
leaves the PING pending, and the next wait on the same :class:`PingProbe` waits for it
again instead of sending another. A reconnect forgets the PINGs it had sent.

This uses the client's private ``_send_ping`` (nats-py 2.x): the only way to send a
PING whose future the caller owns. That writes the PING at once, ahead of the commands
still pending in the client: they are written first (``_write_pending``), so a PONG
answers for everything published before. ``tests/integration/test_hung_dependencies.py``
checks it against a real server stopped and continued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client as NATS

T = TypeVar("T")


class PingProbe:
    """Whether ``nc``'s server answers now, asked without ever cancelling a PING."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._pending: tuple[asyncio.Future[bool], int] | None = None  # PING, reconnects

    async def answers(self, timeout_s: float) -> bool:
        """True when the server answers a PING (this one, or one still pending from an
        earlier call) within ``timeout_s``; False when it does not, or the client is
        not connected. A cancellation of the caller propagates; the PING stays."""
        if not self.nc.is_connected:
            return False
        reconnects = self.nc.stats.get("reconnects", 0)
        if self._pending is None or self._pending[1] != reconnects:
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            try:
                if not _write_pending(self.nc):
                    return False
                await self.nc._send_ping(future)
            except Exception:
                return False
            self._pending = (future, reconnects)
        pending = self._pending[0]
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result
            # and drops the caller's cancel when the PONG lands in the same loop
            # iteration; a store watcher stopped at that moment looped on, and the
            # test that awaited its end hung (CI, twice).
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(pending)
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not pending.cancelled() or (task is not None and task.cancelling()):
                # This call was cancelled (also when the client cancelled its PINGs at
                # the same moment: a watcher stopped then looped on, and whoever
                # awaited its end waited for ever).
                raise
            self._pending = None  # the client closed and cancelled its PINGs
            return False
        self._pending = None
        return True


def _write_pending(nc: NATS) -> bool:
    """Put the commands still pending in the client (not yet handed to its flusher, or
    handed and not written) on the transport, as nats-py's flusher does: nats-py 2.16's
    ``_send_ping`` writes the PING straight to the transport, ahead of them, so its
    PONG said nothing of them (the wire read PING | PUB ...). False when the write
    failed: the commands are kept, in order, for the flusher or the reconnect.

    Written only while nats-py's flusher runs and the transport is open (as
    ``jsapi._Wire._flush`` checks): in the dead-socket window (the client says
    connected, the socket is dead, the flusher stopped) a write without a drain lost
    them, and it went round the inline writes' lock
    (:func:`jetsource.eventstore.bootstrap.survive_a_dead_socket`). There they stay
    pending, for the reconnect, and the probe says no answer (False), as it did."""
    pending = nc._pending
    if not pending:
        return True
    transport = nc._transport
    flusher = nc._flusher_task
    if transport is None or flusher is None or flusher.done() or _closing(transport):
        return False
    return hand_over_pending(nc, transport.writelines)


def hand_over_pending(nc: NATS, write: Callable[[list[bytes]], object]) -> bool:
    """Take the client's pending commands and ``write`` them (a transport's or a stream
    writer's ``writelines``), as nats-py's flusher does. When ``write`` raises, they
    go back in front of any pended since, in order, for the flusher or the reconnect,
    and the answer is False. One piece for the PING's writer here and the event
    store's requests (``jsapi._Wire._flush``)."""
    pending = nc._pending
    nc._pending = []
    nc._pending_data_size = 0
    try:
        write(pending)
    except Exception:
        nc._pending = pending + nc._pending
        nc._pending_data_size = sum(len(c) for c in nc._pending)
        return False
    return True


def _closing(transport: object) -> bool:
    """Whether nats-py's transport (TCP or websocket) is closing or closed."""
    writer = getattr(transport, "_io_writer", None)
    if writer is not None:
        return bool(writer.transport.is_closing())
    ws = getattr(transport, "_ws", None)
    if ws is not None:
        return bool(ws.closed)
    return False


async def round_trip(nc: NATS, timeout_s: float) -> bool:
    """What ``nc.flush(timeout_s)`` promises (everything published before has reached
    the server when it answers), without its hazard: True when answered in time."""
    return await PingProbe(nc).answers(timeout_s)


async def within(aw: Awaitable[T], timeout: float) -> T:
    """``aw`` (nats-py's own ``nc.request``, ``nc.publish``, a ``js.*`` call), its wait
    ended at ``timeout`` for sure: TimeoutError then, as the event store's requests
    (``jsapi.Replies.request``) raise for one not answered in time. An
    ``asyncio.timeout`` around one does not end it there: nats-py's wait for a forced
    flush (``_send_command`` past its pending bound, ``flush_timeout`` None) waits for
    the socket to drain with no end of its own, and swallows the cancellation
    (``_flush_pending``), then goes on to wait for the reply for its whole timeout
    again. Here it runs in a task of its own, left (cancelled) at the timeout; what it
    had put in the client's buffer may still be sent. Not for the hot path: a task
    per call."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait((task,), timeout=max(timeout, 0.0))
    except BaseException:
        task.cancel()
        task.add_done_callback(_retrieved)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieved)
        raise TimeoutError
    return task.result()


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A call left at its timeout: its error (if any) is nobody's."""
    if not task.cancelled():
        task.exception()
