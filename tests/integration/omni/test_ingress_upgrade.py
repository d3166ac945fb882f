"""A request asking for a protocol upgrade (a WebSocket, h2c): the ingest serves none.
A WebSocket request reached the app as a WebSocket no route took and was answered 403
with an empty body on every path (webhooks, /api/, /healthz); a request with a body
answered as HTTP would lose it (the parser stops at an upgrade's head: a webhook
archived empty). Now one without a body is answered as HTTP, its Upgrade ignored, and
one with a body is 400 ``upgrade_unsupported`` in JSON, nothing archived."""

from __future__ import annotations

import asyncio
import json

import pytest

from jetsource.domains.omni.signatures import sign
from jetsource.ingest.server import Ingest
from tests.integration.omni.harness import SECRETS, route
from tests.integration.omni.test_ingress_transport import error_of, tight, until_closed
from tests.integration.omni.test_omni_hostile_input import archived

__all__ = ["tight"]  # the fixture, used by the tests below

WEBSOCKET = (
    b"connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
H2C = (
    b"connection: Upgrade, HTTP2-Settings\r\n"
    b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
)
UPGRADES = pytest.mark.parametrize("upgrade", [WEBSOCKET, H2C], ids=["websocket", "h2c"])


@UPGRADES
async def test_an_upgrade_without_a_body_is_answered_as_http(tight: Ingest, upgrade: bytes) -> None:
    for path, status in (("/healthz", b"200"), (route("acme-cloud"), b"403")):
        request = b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n" + upgrade + b"\r\n"
        answer = await answered(tight.http_port, request)
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body  # JSON, not the empty 403
        if status == b"403":
            assert body["error"]["field"] == "hub.mode"  # Meta's handshake, answered


async def answered(port: int, request: bytes) -> bytes:
    """One answer to ``request`` (the connection may stay open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        return head + await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


@UPGRADES
async def test_an_upgrade_with_a_body_is_refused_in_json_and_nothing_is_archived(
    tight: Ingest, upgrade: bytes
) -> None:
    """(h2c with a body was answered as HTTP without it: archived empty, 400.)"""
    before = await archived(tight)
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    head = (
        f"POST {route('acme-cloud')} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-hub-signature-256: {sign(SECRETS['acme-cloud'], body)}\r\n"
    ).encode()
    answer, _ = await until_closed(tight.http_port, [head + upgrade + b"\r\n" + body])
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    error = error_of(answer)
    assert (error["code"], error["field"]) == ("upgrade_unsupported", "upgrade"), error
    assert await archived(tight) == before
