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

import hashlib
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    if not messages:
        raise ValueError("a segment holds at least one message")
    seqs = [m.seq for m in messages]
    if seqs != sorted(set(seqs)):
        raise ValueError("a segment's messages are in stream order, each once")
    parts = []
    for m in messages:
        subject = m.subject.encode()
        headers = json.dumps(dict(m.headers), separators=(",", ":"), sort_keys=True).encode()
        parts.append(_REC.pack(m.seq, m.time_ns, len(subject), len(headers), len(m.data)))
        parts += [subject, headers, m.data]
    body = b"".join(parts)
    header = json.dumps(
        {
            "format": FORMAT,
            "stream": stream,
            "count": len(messages),
            "first_seq": seqs[0],
            "last_seq": seqs[-1],
            "compression": "zlib",
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    return MAGIC + _LEN.pack(len(header)) + header + zlib.compress(body, level)


def checksum(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def decode(blob: bytes) -> tuple[dict[str, object], list[ArchivedMessage]]:
    """The header and the messages of a segment, every structural fact checked."""
    if not blob.startswith(MAGIC):
        raise SegmentError("not an archive segment (no JSARC1 magic)")
    at = len(MAGIC)
    try:
        (n,) = _LEN.unpack_from(blob, at)
        header = json.loads(blob[at + 4 : at + 4 + n])
        body = zlib.decompress(blob[at + 4 + n :])
    except (struct.error, ValueError, zlib.error) as exc:
        raise SegmentError(f"segment does not decode: {exc}") from exc
    if header.get("format") != FORMAT:
        raise SegmentError(f"segment format {header.get('format')!r}; this code reads {FORMAT}")
    if hashlib.sha256(body).hexdigest() != header.get("body_sha256"):
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
    except (struct.error, ValueError) as exc:
        raise SegmentError(f"segment body does not decode: {exc}") from exc
    if len(out) != header.get("count"):
        raise SegmentError(f"segment holds {len(out)} messages; its header says {header['count']}")
    if out and (out[0].seq, out[-1].seq) != (header.get("first_seq"), header.get("last_seq")):
        raise SegmentError("segment's sequences are not the ones its header names")
    return header, out
