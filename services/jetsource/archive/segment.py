"""Sealed archive segments: stored messages exactly as the stream held them.

A segment is one immutable object::

    b"JSARC1\\n" | u32 header length | header (JSON) | zlib(body)

The header names the stream, the count, the first and last stream sequence and the
SHA-256 of the uncompressed body; the body is every message in stream order::

    u64 seq | u64 time_ns | u16 subject length | u32 headers length | u32 data length
    | subject | headers (JSON) | data (the envelope bytes as stored)

Its key carries the SHA-256 of the whole object, and the manifest entry beside it
repeats it: a changed byte anywhere is found by ``verify`` (both checksums, the
count, the sequences, and every aggregate's versions in the entry).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import zlib
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from jetsource.core.errors import JetsourceError
from jetsource.eventstore.jsapi import DIRECT_GET_HEADERS

MAGIC = b"JSARC1\n"
FORMAT = 1
_LEN = struct.Struct(">I")
_REC = struct.Struct(">QQHII")
# Direct-get metadata the server adds on reading: not part of the stored message.
READ_HEADERS = DIRECT_GET_HEADERS


class SegmentError(JetsourceError):
    """A segment that is not what it says (damaged, truncated, or not a segment)."""


@dataclass(frozen=True)
class ArchivedMessage:
    seq: int
    time_ns: int
    subject: str
    headers: Mapping[str, str]
    data: bytes


def stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in READ_HEADERS}


def encode(stream: str, messages: Sequence[ArchivedMessage], level: int = 6) -> bytes:
    """The segment of ``messages`` (in stream order, each once)."""
    steps = _encoding(stream, messages, level)
    while (done := _step(steps)) is None:
        pass
    return done


async def encode_yielding(
    stream: str, messages: Sequence[ArchivedMessage], level: int = 6
) -> bytes:
    """:func:`encode`, yielding to the event loop between steps (STEP_MESSAGES packed,
    STEP_BYTES of body hashed or compressed): the archiver sealing a full segment held
    the loop some 230 ms in one go (lease renewals, heartbeats, reads waiting). The
    same bytes as zlib.compress(body, level): at levels 1-9 (and -1, the default 6)
    deflate gives the same stream however its input is fed; at level 0 (stored
    blocks) it does not, so that body is stored in one call (no work to step)."""
    steps = _encoding(stream, messages, level)
    while True:
        if (done := _step(steps)) is not None:
            return done
        await asyncio.sleep(0)  # a turn for the loop's other work


def _encoding(
    stream: str, messages: Sequence[ArchivedMessage], level: int
) -> Generator[None, None, bytes]:
    """:func:`encode` in steps: it yields between them, and returns the segment."""
    if not messages:
        raise ValueError("a segment holds at least one message")
    seqs = [m.seq for m in messages]
    if seqs != sorted(set(seqs)):
        raise ValueError("a segment's messages are in stream order, each once")
    parts = []
    for n, m in enumerate(messages, 1):
        subject = m.subject.encode()
        headers = json.dumps(dict(m.headers), separators=(",", ":"), sort_keys=True).encode()
        parts.append(_REC.pack(m.seq, m.time_ns, len(subject), len(headers), len(m.data)))
        parts += [subject, headers, m.data]
        if n % STEP_MESSAGES == 0:
            yield
    body = memoryview(b"".join(parts))
    digest = hashlib.sha256()
    for at in range(0, len(body), STEP_BYTES * 16):
        digest.update(body[at : at + STEP_BYTES * 16])
        yield
    header = json.dumps(
        {
            "format": FORMAT,
            "stream": stream,
            "count": len(messages),
            "first_seq": seqs[0],
            "last_seq": seqs[-1],
            "compression": "zlib",
            "body_sha256": digest.hexdigest(),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    out = [MAGIC, _LEN.pack(len(header)), header]
    if level == 0:
        # Stored blocks: fed to a compressobj (in pieces or in one) they break where
        # its buffer does, other bytes than compress's; storing is no work to step.
        out.append(zlib.compress(body, 0))
        return b"".join(out)
    # zlib.compress(body, level) a piece at a time: compressobj's defaults are
    # compress's (wbits 15, memLevel 8, the default strategy).
    deflate = zlib.compressobj(level)
    for at in range(0, len(body), STEP_BYTES):
        out.append(deflate.compress(body[at : at + STEP_BYTES]))
        yield
    out.append(deflate.flush())
    return b"".join(out)


# How much is done between two yields to the event loop when a segment is sealed,
# checked and decoded by ``encode_yielding`` / ``checksum_yielding`` /
# ``decode_yielding`` (a full segment, 10,000 events of about 1.2 MB, took 140 ms of
# the loop to decode in one go, some 230 ms to seal; a step is about 1-3 ms).
STEP_BYTES = 256 * 1024
STEP_MESSAGES = 200

Segment = tuple[dict[str, object], list[ArchivedMessage]]
_Done = TypeVar("_Done")  # what a stepped encode or decode returns


def checksum(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


async def checksum_yielding(blob: bytes) -> str:
    """:func:`checksum`, yielding to the event loop every STEP_BYTES * 16 bytes."""
    digest, view = hashlib.sha256(), memoryview(blob)
    step = STEP_BYTES * 16
    for at in range(0, len(view), step):
        digest.update(view[at : at + step])
        if at + step < len(view):
            await asyncio.sleep(0)
    return digest.hexdigest()


def decode(blob: bytes) -> Segment:
    """The header and the messages of a segment, every structural fact checked."""
    steps = _decoding(blob)
    while (done := _step(steps)) is None:
        pass
    return done


async def decode_yielding(blob: bytes) -> Segment:
    """:func:`decode`, yielding to the event loop between steps (STEP_BYTES of body
    decompressed, STEP_MESSAGES decoded), so a large segment read by time travel or
    the archiver does not hold every other request of the process."""
    steps = _decoding(blob)
    while True:
        if (done := _step(steps)) is not None:
            return done
        await asyncio.sleep(0)  # a turn for the loop's other work


def _step(steps: Generator[None, None, _Done]) -> _Done | None:
    """One step of ``steps``: None while more follow, else what they return."""
    try:
        next(steps)
    except StopIteration as done:
        result: _Done = done.value
        return result
    return None


def _decoding(blob: bytes) -> Generator[None, None, Segment]:
    """:func:`decode` in steps: it yields between them, and returns what it returns."""
    if not blob.startswith(MAGIC):
        raise SegmentError("not an archive segment (no JSARC1 magic)")
    at = len(MAGIC)
    try:
        (n,) = _LEN.unpack_from(blob, at)
        header = json.loads(blob[at + 4 : at + 4 + n])
        inflate, rest, parts = zlib.decompressobj(), blob[at + 4 + n :], []
        digest = hashlib.sha256()  # of the body, a step's piece at a time
        while True:
            parts.append(inflate.decompress(rest, STEP_BYTES))
            digest.update(parts[-1])
            rest = inflate.unconsumed_tail
            if inflate.eof or not rest:
                break
            yield
        parts.append(inflate.flush())
        digest.update(parts[-1])
        if not inflate.eof:  # as zlib.decompress says it
            raise zlib.error("Error -5 while decompressing data: incomplete or truncated stream")
        body = b"".join(parts)
    except (struct.error, ValueError, zlib.error) as exc:
        raise SegmentError(f"segment does not decode: {exc}") from exc
    if header.get("format") != FORMAT:
        raise SegmentError(f"segment format {header.get('format')!r}; this code reads {FORMAT}")
    if digest.hexdigest() != header.get("body_sha256"):
        raise SegmentError("segment body checksum does not match its header")
    out: list[ArchivedMessage] = []
    pos = 0
    try:
        while pos < len(body):
            seq, time_ns, ls, lh, ld = _REC.unpack_from(body, pos)
            pos += _REC.size
            subject = body[pos : pos + ls].decode()
            pos += ls
            headers = json.loads(body[pos : pos + lh])
            pos += lh
            data = body[pos : pos + ld]
            pos += ld
            if len(data) != ld:
                raise SegmentError("segment body is truncated")
            out.append(ArchivedMessage(seq, time_ns, subject, headers, data))
            if len(out) % STEP_MESSAGES == 0:
                yield
    except (struct.error, ValueError) as exc:
        raise SegmentError(f"segment body does not decode: {exc}") from exc
    if len(out) != header.get("count"):
        raise SegmentError(f"segment holds {len(out)} messages; its header says {header['count']}")
    if out and (out[0].seq, out[-1].seq) != (header.get("first_seq"), header.get("last_seq")):
        raise SegmentError("segment's sequences are not the ones its header names")
    return header, out
