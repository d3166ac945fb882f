"""bootstrap.connect: a caller's timeout stops the connect attempt for good (nats-py
would otherwise retry an absent server forever in the background); a write to a socket
that died before the client noticed is kept for the reconnect, not raised."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import pytest
from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsource.core.settings import JetsourceSettings, NatsSettings, redact_url
from jetsource.devstack.servers import free_port
from jetsource.eventstore import jsapi
from jetsource.eventstore.bootstrap import connect
from tests.infra import Server


def test_a_timeout_abandons_the_connect_attempt() -> None:
    settings = JetsourceSettings(
        nats=NatsSettings(url=f"nats://127.0.0.1:{free_port()}", connect_timeout_s=0.2)
    )

    async def attempt() -> list[asyncio.Task[object]]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connect(settings), 1.0)
        await asyncio.sleep(0.5)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    # Its own event loop: nothing but this attempt could have left a task behind.
    assert asyncio.run(attempt()) == []


def test_urls_are_redacted() -> None:
    assert redact_url("nats://u:secret@a:4222,tls://b:4222") == "nats://***@a:4222,tls://b:4222"
    # A password holding "/" (or "@") was shown from the "/" on: everything to the last @.
    assert redact_url("nats://u:se/cr@et@a:4222") == "nats://***@a:4222"
    assert redact_url("redis://:p/w@v:6379/0") == "redis://***@v:6379/0"
    assert redact_url("u:secret@a:4222") == "***@a:4222"
    assert redact_url("redis://:pa,ss@v:6379/0") == "redis://***@v:6379/0"  # a "," too
    assert redact_url("nats://u:p@a:1, tls://v:w@b:2") == "nats://***@a:1, tls://***@b:2"


# What uvloop raises for a write to a TCP handle closed under the client.
DEAD = "unable to perform operation on <TCPTransport closed=True>; the handler is closed"


async def _dead_window(nc: NATS) -> Any:
    """The moment between the socket's death and the client's noticing it: the flusher
    has stopped on it, writes to it raise. Its writer, which the reconnect replaces
    (the transport stays), is returned to be made dead. The reconnect is quick (the
    server is up)."""
    nc.options["reconnect_time_wait"] = 0.05
    flusher = nc._flusher_task
    assert flusher is not None
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    # Stopped as on a dead socket: ended, not cancelled (a cancelled one is a shutdown's).
    stopped = asyncio.ensure_future(asyncio.sleep(0))
    await stopped
    nc._flusher_task = stopped
    transport = nc._transport
    assert transport is not None
    return transport._io_writer  # type: ignore[attr-defined]


async def test_a_write_to_a_socket_that_died_unnoticed_is_kept_for_the_reconnect(
    nats_server: Server, unique: str
) -> None:
    """nats-py's flusher stops on the first write that meets a dead socket, and until
    its reader sees the end of the stream the client says connected: every publish
    and request then wrote inline and raised uvloop's RuntimeError, which no caller
    takes for NATS away (the ingest answered a webhook 500 with NATS killed; found by
    tests/chaos/test_omni_models_faults_chaos.py). It is kept, the client reconnects
    at once (it said connected, and a flush returned as if all had reached the server,
    until something else noticed), and it goes out then: a request gets its answer."""
    settings = JetsourceSettings(nats=NatsSettings(url=nats_server.url))
    nc = await connect(settings)
    listener = await nats.connect(nats_server.url)
    try:
        got = await listener.subscribe(f"t{unique}.dead")

        async def answer(msg: Msg) -> None:
            await msg.respond(b"answer " + msg.data)

        await listener.subscribe(f"t{unique}.ask", cb=answer)
        await listener.flush()

        def dead(*_: object) -> None:
            raise RuntimeError(DEAD)

        # A request (nats-py's own, flushed inline through the client's _flush_pending):
        # raised RuntimeError; it waits for its answer as while reconnecting.
        writer = await _dead_window(nc)
        writer.writelines = dead
        reply = await nc.request(f"t{unique}.ask", b"q", timeout=2)
        assert reply.data == b"answer q"
        assert nc.stats["reconnects"] == 1

        writer = await _dead_window(nc)
        writer.writelines = dead
        await nc.publish(f"t{unique}.dead", b"kept")  # raised RuntimeError
        assert nc._pending, "the commands are kept for the reconnect"
        await asyncio.sleep(0)
        assert not nc.is_connected, "the reconnect starts at once"
        msg = await got.next_msg(timeout=2)  # out after the reconnect
        assert msg.data == b"kept"
    finally:
        await listener.close()
        await nc.close()


async def test_a_write_whose_drain_fails_is_sent_again_after_the_reconnect(
    nats_server: Server, unique: str
) -> None:
    """nats-py's inline flush takes the pending commands before its drain: a drain
    that failed (ConnectionResetError) lost them silently, the publish returning as
    if sent. They are put back and go out after the reconnect (at least once)."""
    nc = await connect(JetsourceSettings(nats=NatsSettings(url=nats_server.url)))
    listener = await nats.connect(nats_server.url)
    try:
        got = await listener.subscribe(f"t{unique}.lost")
        await listener.flush()
        writer = await _dead_window(nc)
        writer.writelines = lambda *_: None  # written into a socket already dead

        async def drain() -> None:
            raise ConnectionResetError("Connection lost")

        writer.drain = drain
        await nc.publish(f"t{unique}.lost", b"kept")
        assert any(b"kept" in c for c in nc._pending), nc._pending
        msg = await got.next_msg(timeout=2)
        assert msg.data == b"kept"
    finally:
        await listener.close()
        await nc.close()


async def test_two_inline_writes_whose_drains_fail_keep_their_order(
    nats_server: Server, unique: str
) -> None:
    """Two publishes flushed inline in the dead window, both drains failing (asyncio: a
    write to a closing transport is dropped, its drain yields then raises): each put
    its commands back in front of what was pending, the second in front of the first's,
    so 1 then 2 was delivered 2 then 1 after the reconnect. The inline writes go one
    at a time now: the second finds the reconnect started and stays behind the first."""
    nc = await connect(JetsourceSettings(nats=NatsSettings(url=nats_server.url)))
    listener = await nats.connect(nats_server.url)
    try:
        got = await listener.subscribe(f"t{unique}.order")
        await listener.flush()
        writer = await _dead_window(nc)
        writer.writelines = lambda *_: None  # a closing transport drops the write

        async def drain() -> None:
            await asyncio.sleep(0)  # StreamWriter.drain on a closing transport
            raise ConnectionResetError("Connection lost")

        writer.drain = drain
        await asyncio.gather(
            nc.publish(f"t{unique}.order", b"1"), nc.publish(f"t{unique}.order", b"2")
        )
        first = await got.next_msg(timeout=2)
        second = await got.next_msg(timeout=2)
        assert (first.data, second.data) == (b"1", b"2")
    finally:
        await listener.close()
        await nc.close()


async def test_a_lean_request_in_the_dead_window_is_answered_after_the_reconnect(
    nats_server: Server, unique: str
) -> None:
    """The event store's requests (jsapi.Replies) hand their commands to the flusher:
    with it stopped while the client said connected, the flush was a future queued for
    nobody and nothing started the reconnect, so an append waited until the reader saw
    the end of the stream or the ping check fired (here: past its timeout). The
    reconnect starts at once and the request is answered within its timeout."""
    nc = await connect(JetsourceSettings(nats=NatsSettings(url=nats_server.url)))
    listener = await nats.connect(nats_server.url)
    replies = jsapi.Replies(nc)
    await replies.start()
    try:

        async def answer(msg: Msg) -> None:
            await msg.respond(b"answer " + msg.data)

        await listener.subscribe(f"t{unique}.ask", cb=answer)
        await listener.flush()
        assert (await replies.request(f"t{unique}.ask", b"0", None, 2)).data == b"answer 0"
        writer = await _dead_window(nc)

        def dead(*_: object) -> None:
            raise RuntimeError(DEAD)

        writer.writelines = dead  # the socket died; the reader has not seen it yet
        reply = await replies.request(f"t{unique}.ask", b"q", None, 2)
        assert reply.data == b"answer q"
        assert nc.stats["reconnects"] == 1
    finally:
        await listener.close()
        await nc.close()


async def test_a_close_does_not_wait_for_an_inline_write_stuck_in_its_drain(
    nats_server: Server, unique: str
) -> None:
    """nc.close() sets CLOSED, then kicks the flusher through _flush_pending: with the
    flusher stopped that waited for the inline writes' lock, held by a write whose
    drain never ended, and the close hung behind it."""
    nc = await connect(JetsourceSettings(nats=NatsSettings(url=nats_server.url)))
    released = asyncio.Event()
    writer = await _dead_window(nc)
    writer.writelines = lambda *_: None

    async def drain() -> None:
        await released.wait()  # a server that reads nothing

    writer.drain = drain
    stuck = asyncio.create_task(nc.publish(f"t{unique}.stuck", b"x"))
    await asyncio.sleep(0.01)
    try:
        assert not stuck.done()
        await asyncio.wait_for(nc.close(), 1)
        assert nc.is_closed
    finally:
        released.set()
        await stuck
        await nc.close()


async def test_a_cancelled_flusher_starts_no_reconnect(nats_server: Server, unique: str) -> None:
    """A shutdown (aio.stop_others) cancels every task, nats-py's flusher with them: a
    write after that started a reconnect, as if the socket had died (the inline write
    that failed, and the event store's requests)."""
    nc = await connect(JetsourceSettings(nats=NatsSettings(url=nats_server.url)))
    replies = jsapi.Replies(nc)
    await replies.start()
    try:
        flusher = nc._flusher_task
        assert flusher is not None
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await replies.send(f"t{unique}.lean", b"x", "", None, None)
        await asyncio.sleep(0.05)
        assert nc.is_connected and nc.stats["reconnects"] == 0
        assert not jsapi.reconnect_started(nc)
        transport = nc._transport
        assert transport is not None

        def dead(*_: object) -> None:
            raise RuntimeError(DEAD)

        transport._io_writer.writelines = dead  # type: ignore[attr-defined]
        await nc.publish(f"t{unique}.inline", b"y")
        await asyncio.sleep(0.05)
        assert nc.is_connected and nc.stats["reconnects"] == 0
        assert not jsapi.reconnect_started(nc)
    finally:
        await replies.stop()
        nc._pending, nc._pending_data_size = [], 0
        await nc.close()


async def test_a_closed_client_still_raises_connection_closed(
    nats_server: Server, unique: str
) -> None:
    """What survives a dead socket is a write while the client is connected or
    reconnecting: a closed client's publish, request and flush raise as ever."""
    nc = await connect(JetsourceSettings(nats=NatsSettings(url=nats_server.url)))
    replies = jsapi.Replies(nc)
    await replies.start()
    await nc.close()
    with pytest.raises(nats_errors.ConnectionClosedError):
        await nc.publish(f"t{unique}.x", b"a")
    with pytest.raises(nats_errors.ConnectionClosedError):
        await nc.request(f"t{unique}.x", b"a", timeout=0.3)
    with pytest.raises(nats_errors.ConnectionClosedError):
        await replies.request("$JS.API.INFO", b"", None, 0.3)
    with pytest.raises(nats_errors.ConnectionClosedError):
        await nc.flush(1)
