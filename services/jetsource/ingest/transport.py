"""The ingress's HTTP transport under slow or broken clients.

uvicorn sets no deadline on a request's head or body: a connection that sent nothing,
half a head (slowloris), or a body shorter than its ``Content-Length`` (or one byte a
second) was held for ever, each a socket and a task, until the process ran out of file
descriptors and /healthz went unanswered. And the requests its parser refuses (a bad
``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``, a method it does not
know, a URL too long) were answered in plain text, not the documented JSON.

- :func:`guarded_protocol`: uvicorn's httptools protocol with a deadline on the head
  (``INGEST__HEAD_TIMEOUT_S``, from the connection's start or the previous answer),
  answered 408 ``request_timeout`` naming ``headers``, a head over ``max_head_bytes``
  431, a transfer coding other than chunked 501 naming ``transfer-encoding`` (it was
  ignored: a gzip body went to the app as if it were plain), and the parser's 400,
  all in JSON;
- :class:`BodyDeadline`: the body must come whole within ``INGEST__BODY_TIMEOUT_S`` of
  its head, else the receive raises :class:`BodyTimeout` (408 naming ``body``, the
  connection closed); a webhook archives what came (see ``read_body``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import resource
from collections.abc import MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _json_answer(status: bytes, code: str, message: str, field: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()
    return b"".join(
        (
            b"HTTP/1.1 " + status + b"\r\n",
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        )
    )


# The parser's refusal: it says no more than "invalid", so the answer names what it
# checks (uvicorn answered "Invalid HTTP request received." in plain text).
BAD_REQUEST = _json_answer(
    b"400 Bad Request",
    "invalid_argument",
    "not a valid HTTP/1.1 request: its request line (method, URL of at most 64 KiB), a "
    "header, Content-Length (digits, once, not with Transfer-Encoding) or the chunked "
    "body could not be read",
    "request",
)


UPGRADE_REFUSED = _json_answer(
    b"400 Bad Request",
    "upgrade_unsupported",
    "this server takes plain HTTP/1.1 requests only (no WebSocket, no other protocol "
    "upgrade): send the request with a body without Connection: upgrade",
    "upgrade",
)


def _unknown_coding(value: bytes) -> str:
    """The first transfer coding of a Transfer-Encoding value other than chunked (the
    only one the server applies), "" when there is none."""
    for coding in value.decode("latin-1").split(","):
        if (name := coding.strip().lower()) and name != "chunked":
            return name[:40]
    return ""


def _unknown_coding_answer(coding: str) -> bytes:
    return _json_answer(
        b"501 Not Implemented",
        "unsupported_encoding",
        f"Transfer-Encoding {coding!r} is not applied here (chunked only): send the body "
        "uncompressed",
        "transfer-encoding",
    )


def connection_cap(setting: int) -> int:
    """``INGEST__MAX_CONNECTIONS``, or when 0 the process's open-file limit less 128
    (NATS, Valkey, gRPC and files need some), at least 64."""
    if setting > 0:
        return setting
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(64, int(soft) - 128)


class _ByAge:
    """The connections the cap may close, oldest first: a heap of (start, order,
    connection) with lazy removal. A connection is in it (``_queued``) from its start
    and again after each answer; one found answering at the top is dropped, one closed
    counts as stale, and the heap is rebuilt when over half of it is stale. Each
    connection over the cap costs O(log n) amortised; finding the oldest idle one by
    looking at every connection was O(n) each, O(n^2) for a burst of n over the cap."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._order = itertools.count()
        self._stale = 0

    def push(self, conn: Any) -> None:
        if not conn._queued:
            conn._queued = True
            heapq.heappush(self._heap, (conn._since, next(self._order), conn))

    def gone(self, conn: Any) -> None:
        if conn._queued:
            conn._queued = False
            self._stale += 1
            if self._stale > 32 and 2 * self._stale > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2]._queued]
                heapq.heapify(self._heap)
                self._stale = 0

    def oldest_idle(self) -> Any | None:
        """The oldest connection not being answered, taken out (it is being closed);
        those found answering are taken out too (put back after their answer)."""
        while self._heap:
            conn = heapq.heappop(self._heap)[2]
            if not conn._queued:
                self._stale -= 1  # closed
                continue
            conn._queued = False
            if not conn._answering():
                return conn
        return None


BUSY = _json_answer(
    b"503 Service Unavailable",
    "unavailable",
    "every connection this server takes is answering a request; try again shortly",
    "connection",
)


def guarded_protocol(
    head_timeout_s: float, max_head_bytes: int = 64 * 1024, max_connections: int = 0
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol whose request heads must come whole within
    ``head_timeout_s`` of the connection's start or of the previous answer (a
    keep-alive connection idle that long was already closed by uvicorn after 5 s, but
    any byte kept it open), and hold at most about ``max_head_bytes`` (counted from the
    read after the one its first byte came in: one read, at most 256 KiB, over it):
    uvicorn took heads of any size, a 9 MB header made an archive record NATS refused
    (503, retried for ever) and many of them the process's memory.

    At most ``max_connections`` (:func:`connection_cap`) connections: one more closes
    the oldest that is not being answered (idle, or still sending its head), or when
    every one is, is answered 503 and closed. Connections without a cap ran the
    process out of file descriptors: nothing, /healthz neither, was answered.
    """
    cap = connection_cap(max_connections)
    by_age = _ByAge()
    too_large_answer = _json_answer(
        b"431 Request Header Fields Too Large",
        "headers_too_large",
        f"the request's line and headers are over {max_head_bytes} bytes",
        "headers",
    )
    timeout_answer = _json_answer(
        b"408 Request Timeout",
        "request_timeout",
        f"the request's line and headers did not come within {head_timeout_s:g} s",
        "headers",
    )

    class GuardedProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _in_head = False  # a request's first bytes came, not yet all of its head
        _began = False  # a request began in the data being parsed
        _head_bytes = 0  # of the head in progress, read after the read it began in
        _refusal: bytes | None = None  # the answer to a head refused while parsed
        _since = 0.0  # when the connection was made
        _queued = False  # in by_age

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered; armed again after its answer
            if self.pipeline:
                return
            if self._in_head:
                self.transport.write(timeout_answer)
            # else nothing came since the connection or the last answer: closed as
            # uvicorn closes an idle keep-alive connection, without an answer a client
            # could take for its next request's
            self.transport.close()

        def _answering(self) -> bool:
            return bool(self.pipeline) or (
                self.cycle is not None and not self.cycle.response_complete
            )

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._since = self.loop.time()
            if len(self.connections) > cap:
                oldest = by_age.oldest_idle()
                if oldest is None:
                    transport.write(BUSY)
                    transport.close()
                    return
                oldest._disarm()
                oldest.transport.close()
            self._arm()
            by_age.push(self)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            by_age.gone(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._began = False
            super().data_received(data)
            if not self._in_head or self._began or self.transport.is_closing():
                return
            self._head_bytes += len(data)
            if self._head_bytes > max_head_bytes:
                self._disarm()
                self.transport.write(too_large_answer)
                self.transport.close()

        def on_message_begin(self) -> None:
            self._in_head = self._began = True
            self._head_bytes = 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            for name, value in self.headers:
                if name == b"transfer-encoding" and (coding := _unknown_coding(value)):
                    # Raised in a parser callback: parsing stops, and
                    # send_400_response answers this instead.
                    self._refusal = _unknown_coding_answer(coding)
                    raise ValueError(self._refusal)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's head
                by_age.push(self)  # idle again, unless a pipelined request is next

        # The ingest serves no WebSocket (nor any other upgrade). A WebSocket request
        # reached the app as a WebSocket no route took: 403 with an empty body on every
        # path (webhooks, /api/, /healthz). A request without a body is now answered as
        # HTTP, its Upgrade ignored (RFC 9110 7.8: curl --http2 offers h2c so); one with
        # a body is refused in JSON before anything is read: the parser stops at an
        # upgrade's head, so its body would be lost (a webhook archived empty, 400).
        def _should_upgrade(self) -> bool:
            if self._get_upgrade() is None:
                return False
            for name, value in self.headers:
                if name == b"transfer-encoding" or (
                    name == b"content-length" and value.strip() not in (b"", b"0")
                ):
                    return True
            return False

        def _unsupported_upgrade_warning(self) -> None:
            return None  # uvicorn's warning, logged for every such request

        def handle_websocket_upgrade(self) -> None:
            self._disarm()
            self.transport.write(UPGRADE_REFUSED)
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            self.transport.write(self._refusal or BAD_REQUEST)
            self.transport.close()

    return GuardedProtocol


class BodyTimeout(HTTPException):
    """The request's body did not come whole in time: 408 naming ``body``, and the
    connection closed (the rest of the body may still be on its way)."""

    def __init__(self, timeout_s: float, received: int) -> None:
        super().__init__(
            408,
            f"the body did not come whole within {timeout_s:g} s of the request's head "
            f"({received} bytes came)",
            headers={"Connection": "close"},
        )
        self.timeout_s = timeout_s
        self.received = received


class BodyDeadline:
    """ASGI middleware: an HTTP request's body must come whole within ``timeout_s`` of
    its head (when the app is called); a receive past it raises :class:`BodyTimeout`.
    Receives after the body was whole (waiting for a disconnect) are not bounded."""

    def __init__(self, app: Any, timeout_s: float = 30.0) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        whole = False
        received = 0

        async def bounded() -> Any:
            nonlocal whole, received
            if whole:
                return await receive()
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                # (asyncio.timeout, not wait_for: no task made per read on Python 3.11)
                async with asyncio.timeout(left):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.timeout_s, received) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                whole = not message.get("more_body", False)
            else:
                whole = True  # a disconnect: nothing more comes
            return message

        await self.app(scope, bounded, send)
