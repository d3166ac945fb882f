"""Discarding many dead letters costs what they are, not their square: each discard
rewrote the model's control entry (every sequence discarded so far, sorted again) and
looked at every other letter for one of its story ahead of it, so 4,800 letters took
55.6 s and 16 times the letters 35 times as long. The control entry is written once per
DISCARD_BATCH letters now, and a story's letter to wait behind is found in its own
queue."""

from __future__ import annotations

import asyncio

import pytest

from jetsource.eventstore.jsapi import RawMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import ModelControl
from tests.integration.test_poison import projection  # noqa: F401  (the fixture)

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
