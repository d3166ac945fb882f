"""asyncio's "returning true from eof_received() has no effect when using ssl" warning,
logged at every close of a NATS connection over TLS (nats-py upgrades with
``loop.start_tls`` and a stream protocol that never learns it runs over TLS), is
dropped by the services' logging setup; asyncio's other warnings are not."""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
from collections.abc import Iterator

import pytest
import structlog
import trustme

from jetsource.core.logging import setup_logging

# The line as asyncio (sslproto) writes it; the scenario below checks it is the real one.
SSL_EOF_NOISE = "returning true from eof_received() has no effect when using ssl"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, asyncio_log = logging.getLogger(), logging.getLogger("asyncio")
    handlers, level, filters = list(root.handlers), root.level, list(asyncio_log.filters)
    for f in filters:  # an earlier setup's in this process: each test installs its own
        asyncio_log.removeFilter(f)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    asyncio_log.filters[:] = filters
    structlog.reset_defaults()


async def _upgraded_then_closed_by_the_server() -> None:
    """What nats-py does: a plain connection upgraded with ``loop.start_tls`` and a
    fresh StreamReaderProtocol; then the server closes it."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(server_ctx)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    async with server:
        _, plain = await asyncio.open_connection("127.0.0.1", port)
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = await loop.start_tls(
            plain.transport, protocol, client_ctx, server_hostname="127.0.0.1"
        )
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server's close
        if transport is not None:
            transport.close()
        await asyncio.sleep(0)


def test_the_tls_eof_line_is_dropped_and_only_it(restore_logging: None) -> None:
    # The scenario gives asyncio's line as it is (not a made-up record)...
    seen: list[str] = []
    probe = logging.Handler()
    probe.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("asyncio").addHandler(probe)
    try:
        asyncio.run(_upgraded_then_closed_by_the_server())
    finally:
        logging.getLogger("asyncio").removeHandler(probe)
    assert SSL_EOF_NOISE in seen, seen
    # ... and once the services' logging is set up, it is not written.
    out = io.StringIO()
    setup_logging("publisher", "INFO", stream=out)
    asyncio.run(_upgraded_then_closed_by_the_server())
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.warning("Unclosed connection: %r", "kept")
    asyncio_log.warning(SSL_EOF_NOISE + " (another line)")
    logging.getLogger("jetsource.x").warning(SSL_EOF_NOISE)  # not asyncio's
    text = out.getvalue()
    # Only the other line and another logger's: asyncio's own was dropped.
    assert text.count(SSL_EOF_NOISE) == 2, text
    assert "Unclosed connection: 'kept'" in text, text
    # A second setup does not stack a second filter.
    setup_logging("publisher", "INFO", stream=out)
    assert len(asyncio_log.filters) == 1, asyncio_log.filters


def test_the_filter_drops_exactly_that_message() -> None:
    from jetsource.core import logging as jetsource_logging

    assert jetsource_logging.SSL_EOF_NOISE == SSL_EOF_NOISE
    drop = jetsource_logging.SslEofNoiseFilter()

    def record(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)

    assert not drop.filter(record("asyncio", SSL_EOF_NOISE))
    for kept in (
        record("asyncio", "Task exception was never retrieved"),
        record("asyncio", "%r: " + SSL_EOF_NOISE, "x"),
        record("asyncio", SSL_EOF_NOISE.upper()),
        record("asyncio.sub", SSL_EOF_NOISE),
        record("nats", SSL_EOF_NOISE),
    ):
        assert drop.filter(kept), kept.getMessage()
