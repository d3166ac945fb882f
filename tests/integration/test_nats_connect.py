"""bootstrap.connect: a caller's timeout stops the connect attempt for good (nats-py
would otherwise retry an absent server forever in the background); a write to a socket
that died before the client noticed is kept for the reconnect, not raised."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest

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


async def test_a_write_to_a_socket_that_died_unnoticed_is_kept_for_the_reconnect(
    nats_server: Server, unique: str
) -> None:
    """nats-py's flusher stops on the first write that meets a dead socket, and until
    its reader sees the end of the stream the client says connected: every publish
    and request then wrote inline and raised uvloop's RuntimeError, which no caller
    takes for NATS away (the ingest answered a webhook 500 with NATS killed; found by
    tests/chaos/test_omni_models_faults_chaos.py). It is kept and goes out once the
    client writes again."""
    settings = JetsourceSettings(nats=NatsSettings(url=nats_server.url))
    nc = await connect(settings)
    listener = await nats.connect(nats_server.url)
    try:
        got = await listener.subscribe(f"t{unique}.dead")
        await listener.flush()
        # The moment between the socket's death and the client's noticing it: the
        # flusher has stopped on it, writes to it raise.
        flusher = nc._flusher_task
        assert flusher is not None
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        transport = nc._transport
        assert transport is not None

        def dead(*_: object) -> None:
            raise RuntimeError(DEAD)

        transport.writelines = dead  # type: ignore[method-assign,assignment]
        await nc.publish(f"t{unique}.dead", b"kept")  # raised RuntimeError
        replies = jsapi.Replies(nc)
        with pytest.raises(TimeoutError):  # no answer yet: NATS away, as callers read it
            await replies.request("$JS.API.INFO", b"", None, 0.3)
        assert nc._pending, "the commands are kept for the reconnect"
        # The client writes again (as after its reconnect): the message goes out.
        del transport.writelines
        nc._flusher_task = asyncio.get_running_loop().create_task(nc._flusher())
        await nc.flush()
        msg = await got.next_msg(timeout=2)
        assert msg.data == b"kept"
    finally:
        await listener.close()
        await nc.close()
