"""Raw `$JS.API` requests that nats-py 2.16 has no helpers for.

- atomic batch publish (ADR-50, server 2.12+), pipelined: one round trip per batch;
- batched direct get (ADR-31) with paging, and single direct gets by sequence, last
  message of a (wildcard) subject, or first message at or after a time;
- stream create/update/info as plain JSON.

Every reply comes through one wildcard inbox subscription (:class:`Replies`), so a
request costs no SUB/UNSUB and replies can be awaited out of order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsource.core.clock import format_rfc3339_ns, parse_rfc3339_ns

BATCH_LIMIT = 1000  # server default maximum messages per atomic batch
DIRECT_GET_PAGE = 1000

# JetStream error codes we act on.
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_STREAM_NOT_FOUND = 10059
ERR_STREAM_NAME_IN_USE = 10058  # exists with a different configuration
ERR_BATCH_DUPLICATE_MSG_ID = 10201
ERR_MESSAGE_TOO_LARGE = 10054


class JsApiError(Exception):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        super().__init__(f"JetStream error {code}/{err_code}: {description}")


class NoRespondersError(Exception):
    """Nothing listens on the subject: for JetStream, the stream does not exist."""


@dataclass(frozen=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool = False
    batch: str | None = None
    count: int = 1


@dataclass(frozen=True)
class RawMessage:
    subject: str
    seq: int
    time_ns: int
    headers: Mapping[str, str]
    data: bytes


@dataclass(frozen=True)
class OutMessage:
    subject: str
    data: bytes
    headers: Mapping[str, str]


def _status(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers else None


def parse_response(msg: Msg) -> dict[str, Any]:
    if _status(msg) == "503":
        raise NoRespondersError(msg.subject)
    body: dict[str, Any] = json.loads(msg.data) if msg.data else {}
    if err := body.get("error"):
        raise JsApiError(err.get("code", 0), err.get("err_code", 0), err.get("description", ""))
    return body


def parse_puback(msg: Msg) -> PubAck:
    body = parse_response(msg)
    return PubAck(
        stream=body["stream"],
        seq=body["seq"],
        duplicate=bool(body.get("duplicate", False)),
        batch=body.get("batch"),
        count=int(body.get("count", 1)),
    )


def _raw(msg: Msg) -> RawMessage:
    h = msg.headers or {}
    return RawMessage(
        subject=h["Nats-Subject"],
        seq=int(h["Nats-Sequence"]),
        time_ns=parse_rfc3339_ns(h["Nats-Time-Stamp"]),
        headers=h,
        data=msg.data,
    )


class Replies:
    """One wildcard inbox subscription routing replies to per-request queues."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._queues: dict[str, asyncio.Queue[Msg]] = {}
        self._futures: dict[str, asyncio.Future[Msg]] = {}
        self._next = 0
        self._sub: Any = None

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)

    async def _route(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._futures.get(token)
        if future is not None:
            if not future.done():
                future.set_result(msg)
            return
        queue = self._queues.get(token)
        if queue is not None:
            queue.put_nowait(msg)

    def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        self._next += 1
        token = str(self._next)
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._queues[token] = queue
        return f"{self._prefix}.{token}", queue

    def close(self, reply: str) -> None:
        self._queues.pop(reply.rsplit(".", 1)[-1], None)

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None, timeout: float
    ) -> Msg:
        """One request, one reply: a bare future (no queue) on the hot append path."""
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        try:
            await self._nc.publish(
                subject,
                data,
                reply=f"{self._prefix}.{token}",
                headers=headers,  # type: ignore[arg-type]
            )
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._futures.pop(token, None)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None


async def api(
    replies: Replies, subject: str, body: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    msg = await replies.request(f"$JS.API.{subject}", json.dumps(body).encode(), None, timeout)
    return parse_response(msg)


async def publish(replies: Replies, message: OutMessage, timeout: float) -> PubAck:
    msg = await replies.request(message.subject, message.data, message.headers, timeout)
    return parse_puback(msg)


async def publish_atomic_batch(
    replies: Replies, messages: Sequence[OutMessage], batch_id: str, timeout: float
) -> PubAck:
    """Store all ``messages`` or none (stream needs ``allow_atomic``).

    Pipelined: the first message (a request, as the protocol asks) is not awaited
    before the rest are sent, so the batch costs one round trip. A rejected first
    message also fails the commit; its error is the one reported.
    """
    if not 1 <= len(messages) <= BATCH_LIMIT:
        raise ValueError(f"a batch holds 1..{BATCH_LIMIT} messages, got {len(messages)}")
    nc = replies._nc
    first_reply, first_queue = replies.open()
    commit_reply, commit_queue = replies.open()
    try:
        last = len(messages)
        for i, m in enumerate(messages, start=1):
            headers = {**m.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
            if i == last:
                headers["Nats-Batch-Commit"] = "1"
                reply = commit_reply
            else:
                reply = first_reply if i == 1 else ""
            await nc.publish(m.subject, m.data, reply=reply, headers=headers)
        commit = await asyncio.wait_for(commit_queue.get(), timeout)
        if last > 1 and not first_queue.empty():
            first = first_queue.get_nowait()
            if first.data or _status(first):
                parse_response(first)  # raises the first message's own error
        return parse_puback(commit)
    finally:
        replies.close(first_reply)
        replies.close(commit_reply)


async def direct_get(
    replies: Replies, stream: str, request: Mapping[str, Any], timeout: float
) -> RawMessage | None:
    msg = await replies.request(
        f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), None, timeout
    )
    status = _status(msg)
    if status == "404":
        return None
    if status == "503":
        raise NoRespondersError(stream)
    if status:
        raise JsApiError(int(status), 0, (msg.headers or {}).get("Description", ""))
    return _raw(msg)


async def last_for_subject(
    replies: Replies, stream: str, subject: str, timeout: float
) -> RawMessage | None:
    """The newest message whose subject matches ``subject`` (wildcards allowed)."""
    return await direct_get(replies, stream, {"last_by_subj": subject}, timeout)


async def first_at_or_after(
    replies: Replies, stream: str, time_ns: int, subject: str | None, timeout: float
) -> RawMessage | None:
    request: dict[str, Any] = {"start_time": format_rfc3339_ns(time_ns)}
    if subject:
        request["next_by_subj"] = subject
    return await direct_get(replies, stream, request, timeout)


async def direct_get_batch(
    replies: Replies,
    stream: str,
    subject: str,
    from_seq: int,
    timeout: float,
    page: int = DIRECT_GET_PAGE,
) -> AsyncIterator[RawMessage]:
    """Every message matching ``subject`` from ``from_seq`` on, in stream order,
    fetched ``page`` at a time with batched direct get."""
    seq = max(from_seq, 1)
    while True:
        reply, queue = replies.open()
        try:
            body = {"seq": seq, "batch": page, "next_by_subj": subject}
            await replies._nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(body).encode(), reply=reply
            )
            pending = 0
            while True:
                msg = queue.get_nowait() if not queue.empty() else None
                if msg is None:
                    async with asyncio.timeout(timeout):
                        msg = await queue.get()
                status = _status(msg)
                if status is None:
                    raw = _raw(msg)
                    seq = raw.seq + 1
                    yield raw
                    continue
                if status == "204":  # end of this batch
                    pending = int((msg.headers or {}).get("Nats-Num-Pending", "0"))
                    break
                if status == "404":
                    return
                if status == "503":
                    raise NoRespondersError(stream)
                raise JsApiError(int(status), 0, (msg.headers or {}).get("Description", ""))
        finally:
            replies.close(reply)
        if pending == 0:
            return
