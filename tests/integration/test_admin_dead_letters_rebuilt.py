"""A version emptied by `projector reset` or `drop` loses its dead letters with its
data, and a worker never parks the events of a story that come before its first
dead letter. A reset (or drop and rebuild of the same number) parked a poisoned story
from its first event: the old letters were loaded as parked and every sequence of the
story was filed behind them, so the reset did not equal a clean build."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import context_projection, seed

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique) as p:
        yield p


async def poisoned(p: Projection) -> int:
    """Story s0 with 3 events, then a message that is no event: its sequence."""
    await seed(p.store, ["s0"], 3)
    ack = await p.nc.request(f"{p.store.settings.subject_prefix}.s0.DecisionAdded", b"\xff", 5)
    return int(json.loads(ack.data)["seq"])


async def letters(p: Projection, version: int) -> list[int]:
    return sorted(d.original_seq for d in await p.dead_letters.list(p.spec("context", version)))


async def test_a_reset_or_a_rebuilt_number_parks_nothing_before_the_poison(
    projection: Projection,
) -> None:
    p = projection
    junk = await poisoned(p)
    await p.control.ensure("context", 1)
    v1 = p.model("context", 1)
    await Worker(p.nc, p.store, v1, p.dead_letters, p.settings.projector).run(until_caught_up=True)
    assert await v1.position("s0") == 3 and await letters(p, 1) == [junk]

    await admin.reset(p, "context", settle_s=0.1, verify_s=0.1)
    assert await v1.position("s0") == 3  # was 0: parked from event 1
    assert await letters(p, 1) == [junk]  # filed again by the build, once

    await admin.rebuild(p, "context", 2)
    assert await letters(p, 2) == [junk]
    await admin.drop(p, "context", 2, settle_s=0.1, verify_s=0.1)
    assert await letters(p, 2) == []  # gone with its data
    await admin.rebuild(p, "context", 2)
    assert await p.model("context", 2).position("s0") == 3
    assert await letters(p, 2) == [junk]


async def test_a_worker_applies_what_comes_before_a_dead_letter(projection: Projection) -> None:
    """Letters a build finds already filed (left by an earlier run of its version)
    park the story from the letter on, never before it."""
    p = projection
    junk = await poisoned(p)
    raw = await jsapi.direct_get(p.store._replies, p.store.settings.stream, {"seq": junk}, 5)
    assert raw is not None
    await p.dead_letters.publish(p.spec("context", 1), "s0", raw, "undecodable", 5)
    await p.control.ensure("context", 1)
    v1 = p.model("context", 1)
    await Worker(p.nc, p.store, v1, p.dead_letters, p.settings.projector).run(until_caught_up=True)
    assert await v1.position("s0") == 3
    assert await letters(p, 1) == [junk]
