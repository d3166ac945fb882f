"""``core.natsping.round_trip`` promises what ``nc.flush`` does: everything published
before has reached the server when it answers (the erasure announcement relies on it).
nats-py 2.16's ``_send_ping`` wrote the PING straight to the socket, ahead of the
commands still pending in the client: the wire read ``PING | PUB ...`` and the PONG
said nothing of them. A proxy records what the client sends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import nats
import pytest
from nats.aio.client import Client as NATS

from jetsource.core.natsping import round_trip
from jetsource.eventstore.jsapi import Replies
from tests.infra import Server

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def recording_proxy(url: str, sent: bytearray) -> AsyncIterator[str]:
    """A TCP proxy to ``url`` that appends every byte a client sends to ``sent``."""
    target = urlparse(url)
    pipes: list[asyncio.Task[None]] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if up:
                    sent.extend(data)
                writer.write(data)
        writer.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(target.hostname, target.port)
        pipes.extend(
            (asyncio.create_task(pipe(cr, sw, True)), asyncio.create_task(pipe(sr, cw, False)))
        )

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"nats://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    finally:
        proxy.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def test_what_was_published_before_a_round_trip_went_out_before_its_ping(
    nats_server: Server, unique: str
) -> None:
    sent = bytearray()
    async with recording_proxy(nats_server.url, sent) as url:
        nc = await nats.connect(url)
        try:
            replies = Replies(nc)
            await replies.start()
            assert await round_trip(nc, 2)
            for i in range(3):
                sent.clear()
                # nats-py's own publish, and jsapi's (written by a loop callback).
                await nc.publish(f"order{unique}.plain", b"%d" % i)
                await replies.send(f"order{unique}.lean", b"%d" % i, "", None)
                assert nc._pending, "the commands are still pending in the client"
                assert await round_trip(nc, 2)
                assert bytes(sent) == (
                    b"PUB order%b.plain  1\r\n%d\r\nPUB order%b.lean  1\r\n%d\r\nPING\r\n"
                    % (unique.encode(), i, unique.encode(), i)
                ), f"round {i}"
            await replies.stop()
        finally:
            await nc.close()


async def test_the_projector_clis_nats_probe_pings_after_what_is_pending(
    nats_server: Server, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector CLI's probe (``_nats_answers``) used ``nc.flush``, whose PING went
    ahead of the commands still pending: its PONG said nothing of them."""
    from jetsource.cli import projector
    from jetsource.eventstore import bootstrap

    sent = bytearray()
    async with recording_proxy(nats_server.url, sent) as url:

        async def connect(settings: object) -> NATS:
            nc = await nats.connect(url)
            assert await round_trip(nc, 2)
            sent.clear()
            # Buffered and not yet written (as nats-py's _send_command leaves a command
            # while a flush is already queued): pending when the probe starts.
            command = b"PUB probe%b  1\r\n1\r\n" % unique.encode()
            nc._pending.append(command)
            nc._pending_data_size += len(command)
            return nc

        monkeypatch.setattr(bootstrap, "connect", connect)
        assert await projector._nats_answers(None)  # type: ignore[arg-type]
        assert bytes(sent).startswith(b"PUB probe%b  1\r\n1\r\nPING\r\n" % unique.encode())
