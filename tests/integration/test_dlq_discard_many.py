"""Discarding many dead letters costs what they are, not their square: each discard
rewrote the model's control entry (every sequence discarded so far, sorted again) and
looked at every other letter for one of its story ahead of it, so 4,800 letters took
55.6 s and 16 times the letters 35 times as long. The control entry is written once per
DISCARD_BATCH letters now, and a story's letter to wait behind is found in its own
queue."""

from __future__ import annotations

import asyncio

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.eventstore.jsapi import RawMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import ModelControl
from jetsource.projection.deadletters import DeadLetter
from jetsource.projection.repair import void_sequence
from tests.integration.test_poison import (
    projection,  # noqa: F401  (the fixture)
    run_until_caught_up,
)

pytestmark = pytest.mark.integration

N = 300


async def test_many_discards_write_the_control_entry_once_per_batch(
    projection: Projection,  # noqa: F811
) -> None:
    p = projection
    await p.control.ensure("context", 1)
    spec = p.spec("context", 1)

    async def letter(story: str, seq: int) -> None:
        # Letters of events that are not there: a discard steps over them by rule.
        await p.dead_letters.publish(
            spec, story, RawMessage(f"x.{story}", seq, 0, {}, b"x"), "r", 1
        )

    await asyncio.gather(*[letter(f"s{i}", 10**9 + i) for i in range(N)])
    await letter("twice", 10**9 + N)
    await letter("twice", 10**9 + N + 1)
    letters = await admin.dlq_list(p, "context")
    later = next(d for d in letters if d.original_seq == 10**9 + N + 1)
    # The later letter of a story waits behind its first, as before.
    report = await admin.dlq_discard(p, "context", dlq_seqs=[later.dlq_seq])
    assert report.done == [] and "behind dead letter" in report.failed[later.dlq_seq]

    saves = 0
    save = p.control.save

    async def counted(name: str, control: ModelControl) -> ModelControl:
        nonlocal saves
        saves += 1
        return await save(name, control)

    p.control.save = counted  # type: ignore[method-assign, assignment]
    report = await admin.dlq_discard(p, "context")
    assert report.failed == {}
    assert sorted(report.done) == sorted(d.dlq_seq for d in letters)
    assert saves <= -(-(N + 2) // admin.DISCARD_BATCH), saves  # was one per letter
    control = await p.control.get("context")
    assert control is not None
    assert set(control.discarded) == {d.original_seq for d in letters}
    assert await admin.dlq_list(p, "context") == []


async def test_a_void_reads_the_dead_letters_of_its_story_alone(
    projection: Projection,  # noqa: F811
) -> None:
    """``repair void`` read every dead letter of the stream (payloads and all) to find
    its story's: voiding poison in N stories one by one read N letters N times. It
    reads the story's subjects now, and still retries the story's letter."""
    p = projection
    await p.control.ensure("context", 1)
    spec = p.spec("context", 1)
    await asyncio.gather(
        *[
            p.dead_letters.publish(
                spec, f"o{i}", RawMessage(f"x.o{i}", 10**9 + i, 0, {}, b"x"), "r", 1
            )
            for i in range(200)
        ]
    )
    await p.store.append("story", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
    bad = await p.store.append("story", [NewEvent(ev.ContextCreated(title="again"))], 1)
    await run_until_caught_up(p, "context")
    assert [d.aggregate_id for d in await p.dead_letters.list(spec, "story")] == ["story"]

    parsed = 0
    parse = p.dead_letters._parse

    def counted(raw: RawMessage) -> DeadLetter:
        nonlocal parsed
        parsed += 1
        return parse(raw)

    p.dead_letters._parse = counted  # type: ignore[method-assign]
    await void_sequence(p, bad.stream_seqs[0], "duplicate creation", "tester", domain="context")
    assert parsed <= 2, parsed  # was every letter of the stream (201)
    assert await p.dead_letters.list(spec, "story") == []
    assert len(await p.dead_letters.list(spec)) == 200
