"""Requests of canonical events bounded in bytes as well as in count.

gRPC refuses a message over its limit (4 MiB by default; the servers'
``JETSOURCE_GRPC__MAX_MESSAGE_BYTES``) with RESOURCE_EXHAUSTED "Received message larger
than max" before the observer sees it. One event may hold 256 KiB
(``MAX_PAYLOAD_BYTES``), so 500 of them are far over it: a writer that batched by count
alone sent a request that could never pass, and resent it for ever. Writers (the SDK,
the JSONL import, the sessions writer) cut their requests at ``MAX_REQUEST_BYTES`` too,
and a request refused for its size anyway (a server with a smaller limit) is split in
two and sent again, down to one event, which is then refused alone, clearly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import grpc

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent

# A quarter of gRPC's default limit: a request of events each under the observer's
# payload limit stays far from it, and one more event never takes it over.
MAX_REQUEST_BYTES = 1024 * 1024
# What a request adds to each event beside its own bytes (its field tag and length).
_FRAMING = 6


def encoded_size(event: CanonicalEvent) -> int:
    """The bytes ``event`` adds to a ``RecordBatchRequest``."""
    return event.ByteSize() + _FRAMING


def fitting(events: Iterable[CanonicalEvent], max_events: int, max_bytes: int) -> int:
    """How many of the first ``events`` one request carries: at most ``max_events``,
    at most ``max_bytes`` encoded, and at least one (an event larger than
    ``max_bytes`` goes alone)."""
    n = total = 0
    for event in events:
        if n >= max_events:
            break
        total += encoded_size(event)
        if n and total > max_bytes:
            break
        n += 1
    return n


def requests(
    events: Sequence[CanonicalEvent],
    max_events: int,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> Iterator[Sequence[CanonicalEvent]]:
    """``events`` cut, in order, into requests that :func:`fitting` allows."""
    start = total = 0
    for i, event in enumerate(events):
        size = encoded_size(event)
        if i > start and (i - start >= max_events or total + size > max_bytes):
            yield events[start:i]
            start, total = i, 0
        total += size
    if start < len(events):
        yield events[start:]


def too_large(exc: grpc.aio.AioRpcError) -> bool:
    """The request (or its answer) was over gRPC's message limit: sending the same
    bytes again can never pass, unlike a RESOURCE_EXHAUSTED for too many calls."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (
        exc.details() or ""
    )
