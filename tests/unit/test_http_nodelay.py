"""The ingest's HTTP socket (``bind_socket``, served by uvicorn) answers without waiting
on Nagle's algorithm. asyncio turns TCP_NODELAY on only for accepted sockets whose
``proto`` is IPPROTO_TCP; a socket made with ``proto=0`` left it off, and every answer
uvicorn wrote in two parts (headers, then body) waited about 40 ms for the client's
delayed ACK: 44 ms per request against a kept-alive connection, where uvicorn binding
its own socket answered in 0.5 ms."""

from __future__ import annotations

import asyncio
import socket

from jetsource.core.metrics import bind_socket


async def _accepted_nodelay(host: str) -> int:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    sock = bind_socket("HTTP", host, 0)
    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection(host, port)
        value = await asyncio.wait_for(seen, 5)
        writer.close()
        return value
    finally:
        server.close()
        await server.wait_closed()


def test_an_accepted_http_connection_has_nagle_off() -> None:
    assert asyncio.run(_accepted_nodelay("127.0.0.1")) != 0


def test_the_socket_names_tcp_as_its_protocol() -> None:
    sock = bind_socket("HTTP", "127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
