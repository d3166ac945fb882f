"""A sealed segment's bytes are fixed: the same messages seal into the same object
(the name carries its hash; a segment written again by a second archiver or a rerun
must be the one already stored, create-only). Pinned here for a full segment that
crosses every step of the encoder (messages, body pieces, incompressible data),
whatever way the encoder is run (in place, or yielding to the loop)."""

from __future__ import annotations

import hashlib
import zlib

import pytest

from jetsource.archive import segment
from jetsource.archive.segment import ArchivedMessage

EVENTS = 10_000
# sha256 of segment.encode("CE", _messages()) as sealed by the encoder of f695327
# (one-shot zlib.compress(body, 6)); zlib's deflate gives the same stream for the
# same input and level however the input is fed.
GOLDEN_SHA256 = "62775e18f00611631c5efa07eb692c8ce83a7d6713e365732f5409f7a1b16842"
GOLDEN_SIZE = 519_088


def _messages() -> list[ArchivedMessage]:
    out = []
    for i in range(EVENTS):
        noise = hashlib.sha256(i.to_bytes(4, "big")).digest() * (i % 7)  # incompressible
        headers = {"Nats-Msg-Id": f"e{i}", "Jetsource-Type": "DecisionAdded"}
        if i % 5 == 0:
            headers = {}
        if i % 11 == 0:
            headers["Jetsource-Note"] = "café ✓"
        out.append(
            ArchivedMessage(
                3 * i + 1,
                1_700_000_000_000_000_000 + 7 * i,
                f"ce.events.a{i % 97}.Décision" if i % 13 == 0 else f"ce.events.a{i % 97}.X",
                headers,
                noise + i.to_bytes(8, "big") * (i % 40),
            )
        )
    return out


@pytest.mark.skipif("zlib-ng" in zlib.ZLIB_RUNTIME_VERSION, reason="another deflate")
def test_a_segment_seals_into_the_golden_bytes() -> None:
    blob = segment.encode("CE", _messages())
    assert (hashlib.sha256(blob).hexdigest(), len(blob)) == (GOLDEN_SHA256, GOLDEN_SIZE)


async def test_the_yielding_encoder_seals_the_same_bytes() -> None:
    messages = _messages()
    blob = segment.encode("CE", messages)
    # The compressed body is zlib.compress's of the body, on any zlib.
    at = len(segment.MAGIC) + 4 + int.from_bytes(blob[len(segment.MAGIC) :][:4], "big")
    assert blob[at:] == zlib.compress(zlib.decompress(blob[at:]), 6)
    assert await segment.encode_yielding("CE", messages) == blob
    assert [m.seq for m in segment.decode(blob)[1]] == [m.seq for m in messages]


@pytest.mark.parametrize("level", [0, 1, 9])
async def test_every_level_seals_what_zlib_compress_makes(level: int) -> None:
    """At level 0 (stored blocks) deflate's stream depends on how its input is fed: a
    body fed a step at a time sealed other bytes than zlib.compress(body, 0) (and the
    in-place encoder's). Level 0 is stored in one call (storing is no work to step)."""
    messages = _messages()[:2_000]
    blob = segment.encode("CE", messages, level)
    at = len(segment.MAGIC) + 4 + int.from_bytes(blob[len(segment.MAGIC) :][:4], "big")
    assert blob[at:] == zlib.compress(zlib.decompress(blob[at:]), level)
    assert await segment.encode_yielding("CE", messages, level) == blob
