"""The ingress's HTTP server under slow or broken clients, over real sockets: a head or a
body that does not come whole in time (408, the connection closed, a webhook archived
with what came), requests the HTTP parser refuses (400 in JSON), heads over the limit
(431), the 405 Allow list, no redirect for a trailing slash, and a refused request
whose headers are too large for the archive (413 archived, not a 500/503)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1.raw_pb2 import VERDICT_REJECTED
from jetsource.domains.omni.intake import WebhookRequest
from jetsource.domains.omni.signatures import sign
from jetsource.ingest.server import Ingest, build
from tests.fixtures.omni import FIXTURES
from tests.infra import Server
from tests.integration.omni.harness import SECRETS, headers_for, omni_settings, route
from tests.integration.omni.test_omni_hostile_input import archived, last_record, written

HEAD_S, BODY_S, CAP = 0.4, 0.4, 10
CLOUD = next(f for f in FIXTURES if f.instance == "acme-cloud" and f.outcome == "normalized")


@pytest.fixture
async def tight(nats_server: Server, valkey_server: Server, unique: str) -> AsyncIterator[Ingest]:
    settings = omni_settings(
        nats_server.url,
        valkey_server.url,
        unique,
        head_timeout_s=HEAD_S,
        body_timeout_s=BODY_S,
        max_head_bytes=4096,
        max_connections=CAP,
    )
    service = await build(settings)
    await service.start_http("127.0.0.1", 0)
    yield service
    await service.stop(0)


async def until_closed(
    port: int, pieces: list[bytes], every_s: float = 0.0, wait_s: float = 5.0
) -> tuple[bytes, float]:
    """Send ``pieces`` (``every_s`` apart, while the server reads), then read until the
    server closes the connection: (what it answered, seconds to the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def trickle() -> None:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(every_s)

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), wait_s)
        return answer, time.monotonic() - started
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


def error_of(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), answer[:300]
    error: dict[str, Any] = json.loads(body)["error"]
    return error


def signed_head(length: int, body: bytes) -> bytes:
    lines = [
        f"POST {route('acme-cloud')} HTTP/1.1",
        "host: ingest",
        "content-type: application/json",
        f"content-length: {length}",
        f"x-hub-signature-256: {sign(SECRETS['acme-cloud'], body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_head_that_does_not_come_in_time_is_408_in_json_and_closed(tight: Ingest) -> None:
    """Half a head (a slowloris sending a byte at a time keeps it coming) was held for
    ever: now 408 naming headers within the deadline, the connection closed."""
    records = await archived(tight)
    head = f"POST {route('acme-cloud')} HTTP/1.1\r\nhost: ingest\r\nx-slow: ".encode()
    pieces = [head] + [b"a"] * 100
    answer, elapsed = await until_closed(tight.http_port, pieces, every_s=0.05)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    error = error_of(answer)
    assert (error["code"], error["field"]) == ("request_timeout", "headers"), error
    assert elapsed < HEAD_S + 1.5, elapsed
    assert await archived(tight) == records  # it never was a request


async def test_an_idle_connection_is_closed_without_an_answer(tight: Ingest) -> None:
    """Nothing sent at all, or nothing since the last answer: closed, no 408 a client
    could take for the answer to its next request."""
    answer, elapsed = await until_closed(tight.http_port, [])
    assert answer == b"" and elapsed < HEAD_S + 1.5, (answer, elapsed)
    answer, _ = await until_closed(tight.http_port, [b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1, answer


async def test_a_body_that_does_not_come_in_time_is_408_archived_and_closed(
    tight: Ingest,
) -> None:
    """A Content-Length longer than the body (or a body sent a byte a second) was
    waited for as long as the client kept the connection: now 408 naming body, the
    request archived as rejected with what came, nothing stored, the connection
    closed (the rest is not waited for)."""
    body = json.dumps(CLOUD.body()).encode()
    before, records = await written(tight), await archived(tight)
    pieces = [signed_head(len(body), body), body[:10]] + [b" "] * 100
    answer, elapsed = await until_closed(tight.http_port, pieces, every_s=0.05)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    error = error_of(answer)
    assert (error["code"], error["field"]) == ("request_timeout", "body"), error
    assert error["raw_id"] and f"of {len(body)} bytes came" in error["message"], error
    assert elapsed < BODY_S + 1.5, elapsed
    assert await archived(tight) == records + 1
    record = await last_record(tight)
    assert (record.verdict, record.http_status, record.field) == (VERDICT_REJECTED, 408, "body")
    assert record.reason.startswith("request_timeout"), record.reason
    assert record.body.startswith(body[:10]) and record.body_size == len(body)
    assert await written(tight) == before


async def test_a_slow_body_on_the_rest_api_is_408_too(tight: Ingest) -> None:
    head = b"POST /api/v1/events/e1/status HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
    answer, _ = await until_closed(tight.http_port, [head, b'{"state": '])
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    error = error_of(answer)
    assert (error["code"], error["field"]) == ("request_timeout", "body"), error


@pytest.mark.parametrize(
    "request_",
    [
        b"FOO / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /webhooks/whatsapp/acme-cloud HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
        b"POST /webhooks/whatsapp/acme-cloud HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /webhooks/whatsapp/acme-cloud HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
        b"content-length: 3\r\n\r\n{}",
        b"GET /livez?" + b"a" * 70_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",
    ],
    ids=["method", "content-length", "with-chunked", "two-lengths", "long-url"],
)
async def test_requests_the_http_parser_refuses_are_answered_in_json(
    tight: Ingest, request_: bytes
) -> None:
    """uvicorn answered them "Invalid HTTP request received." in plain text."""
    answer, _ = await until_closed(tight.http_port, [request_])
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    error = error_of(answer)
    assert (error["code"], error["field"]) == ("invalid_argument", "request"), error


async def test_a_transfer_coding_other_than_chunked_is_501_and_chunked_is_taken(
    tight: Ingest,
) -> None:
    """ "Transfer-Encoding: gzip, chunked" was parsed as chunked alone: the gzip bytes went
    to the app as the body (a bad signature or "not UTF-8" for a coding it never
    applied). Nothing is archived: it is refused before any route."""
    body = json.dumps(CLOUD.body()).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = signed_head(0, body).replace(b"content-length: 0", b"transfer-encoding: %s")
    records = await archived(tight)
    answer, _ = await until_closed(tight.http_port, [head % b"gzip, chunked" + chunked])
    assert answer.startswith(b"HTTP/1.1 501 "), answer[:200]
    error = error_of(answer)
    assert (error["code"], error["field"]) == ("unsupported_encoding", "transfer-encoding")
    assert "'gzip'" in error["message"], error
    assert await archived(tight) == records
    ok = head.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n") % b"chunked"
    answer, _ = await until_closed(tight.http_port, [ok + chunked])
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


async def test_a_head_over_max_head_bytes_is_431(tight: Ingest) -> None:
    """Heads of any size were read (9 MB of headers: an archive record NATS refused)."""
    pieces = [b"GET /livez HTTP/1.1\r\nhost: x\r\n"] + [b"x-pad: " + b"a" * 1000 + b"\r\n"] * 40
    try:
        answer, _ = await until_closed(tight.http_port, pieces, every_s=0.01)
    except ConnectionResetError:  # closed while it still sent: the answer may be lost
        pytest.fail("the connection was reset before the 431 was read")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    error = error_of(answer)
    assert (error["code"], error["field"]) == ("headers_too_large", "headers"), error
    answer, _ = await until_closed(
        tight.http_port, [b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"]
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


async def test_405_names_every_method_of_the_path_and_a_trailing_slash_is_404(
    http: httpx.AsyncClient,
) -> None:
    """The WhatsApp webhook takes GET (Meta's handshake) and POST: 405 said "Allow:
    POST" and "(allowed: )". A trailing slash was 307 to the Host header's URL over
    plain http, where a provider would resend the signed body."""
    for method in ("PUT", "DELETE", "OPTIONS"):
        response = await http.request(method, route("acme-cloud"))
        assert response.status_code == 405, response.text
        assert response.headers["allow"] == "GET, POST", response.headers
        assert "(allowed: GET, POST)" in response.json()["error"]["message"]
    response = await http.put(route("acme-bot"))
    assert response.headers["allow"] == "POST"
    assert "(allowed: POST)" in response.json()["error"]["message"]
    body = b"{}"
    response = await http.post(
        route("acme-cloud") + "/", content=body, headers=headers_for("acme-cloud", body)
    )
    assert response.status_code == 404, (response.status_code, response.headers)
    assert response.json()["error"]["field"] == "path"


async def test_an_unknown_instance_of_any_length_is_named_cut(http: httpx.AsyncClient) -> None:
    name = "a" * 8000
    for response in (
        await http.post(f"/webhooks/whatsapp/{name}", content=b"{}"),
        await http.get(f"/webhooks/whatsapp/{name}"),
    ):
        assert response.status_code == 404, response.text
        assert len(response.json()["error"]["message"]) < 300, response.text[:300]


async def test_a_refused_request_whose_headers_the_archive_cannot_take_is_archived_cut(
    ingest: Ingest,
) -> None:
    """Headers of 7 MB with a signed body: its record is over the raw archive, so the
    request is refused 413, and that refusal was archived whole, which JetStream
    refused (a 500; over NATS's max_payload a 503 the provider retried for ever)."""
    body = json.dumps(CLOUD.body()).encode()
    headers = {**headers_for("acme-cloud", body), "x-big": "a" * 7_000_000}
    records = await archived(ingest)
    answer = await ingest.intake.handle(
        WebhookRequest("whatsapp", "acme-cloud", headers, body, path=route("acme-cloud"))
    )
    assert answer.status == 413, answer
    assert await archived(ingest) == records + 1
    record = await last_record(ingest)
    assert (record.verdict, record.http_status) == (VERDICT_REJECTED, 413)
    assert record.headers["x-big"].endswith("(7000000 chars)"), record.headers["x-big"][-40:]


async def test_connections_over_the_cap_close_the_oldest_idle_and_health_answers(
    tight: Ingest,
) -> None:
    """Connections were not capped: enough of them idle or sending a head slowly ran
    the process out of file descriptors, and /healthz went unanswered. Over
    INGEST__MAX_CONNECTIONS the oldest not being answered is closed; when every one is
    answering, a new one is answered 503 in JSON."""
    opened = []
    for _ in range(3 * CAP):
        reader, writer = await asyncio.open_connection("127.0.0.1", tight.http_port)
        writer.write(b"GET /livez HTTP/1.1\r\nhost: x\r\n")  # a head that stops there
        await writer.drain()
        opened.append((reader, writer))
    try:
        answer, _ = await until_closed(
            tight.http_port, [b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"]
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        closed = 0
        for reader, _ in opened[: 2 * CAP]:  # the oldest: closed, without an answer
            data = await asyncio.wait_for(reader.read(), 0.2 * HEAD_S)
            closed += data == b""
        assert closed == 2 * CAP, closed
    finally:
        for _, writer in opened:
            writer.close()
    busy = []
    head = b"POST /api/v1/events/e1/status HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"
    for _ in range(CAP + 1):  # each answering a request (waiting for its body)
        busy.append(await asyncio.open_connection("127.0.0.1", tight.http_port))
        busy[-1][1].write(head)
        await busy[-1][1].drain()
    try:
        await asyncio.sleep(0.05)
        answer, _ = await until_closed(tight.http_port, [b"GET /livez HTTP/1.1\r\n\r\n"])
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert error_of(answer)["field"] == "connection"
    finally:
        for _, writer in busy:
            writer.close()


async def test_a_body_over_the_limit_announced_with_expect_100_continue_is_not_asked_for(
    tight: Ingest,
) -> None:
    """The 64 KiB kept for the archive were read, so the client was answered "100
    Continue" and sent its body, only to be refused 413."""
    head = signed_head(10**9, b"{}").replace(b"\r\n\r\n", b"\r\nexpect: 100-continue\r\n\r\n")
    records = await archived(tight)
    answer, _ = await until_closed(tight.http_port, [head])
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert error_of(answer)["code"] == "body_too_large"
    assert await archived(tight) == records + 1
    record = await last_record(tight)
    assert (record.http_status, record.body, record.body_size) == (413, b"", 10**9)
