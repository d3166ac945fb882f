"""A live worker sends the acks of applied events together (runtime.ACK_DELAY_S)
instead of one write per batch: every applied event is still acked (nothing pending
once the stream is quiet, and when the worker stops), the model sees every event at
once, and a build (until caught up) still acks batch by batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.eventstore import jsapi
from jetsource.projection import runtime
from jetsource.projection.bootstrap import Projection
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projection_of, seed, story_ids

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique) as p:
        yield p


async def consumer(p: Projection, worker: Worker) -> dict[str, Any]:
    info = await jsapi.consumer_info(
        p.store._replies, p.store.settings.stream, worker.spec.durable, 5.0
    )
    assert info is not None
    return info


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_live_worker_holds_acks_and_sends_them_all(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = projection
    model = p.model("context", 1)
    assert isinstance(model, ContextModel)
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    sent: list[int] = []  # acks per write
    send = worker._send_acks

    async def counting() -> None:
        if worker._held_acks:
            sent.append(len(worker._held_acks))
        await send()

    monkeypatch.setattr(worker, "_send_acks", counting)
    # Long enough that batches arriving together share a write.
    monkeypatch.setattr(runtime, "ACK_DELAY_S", 0.5)
    task = asyncio.create_task(worker.run())
    try:
        stories = story_ids(6)
        # One event per append, spread out: many small batches.
        for i in range(10):
            for s in stories:
                await p.store.append(s, [_event(s, i)], i)
        await until(lambda: _applied(model, stories, 10))
        assert worker.stats.batches > len(sent)  # fewer writes than batches

        async def nothing_pending() -> bool:
            info = await consumer(p, worker)
            return int(info["num_ack_pending"]) == 0 and int(info["num_pending"]) == 0

        await until(nothing_pending)  # sent once nothing more arrived
        assert sum(sent) == 60
        assert worker.stats.applied == 60 and worker.stats.duplicates == 0

        # Held when the worker stops: sent on the way out, nothing redelivered.
        for s in stories:
            await p.store.append(s, [_event(s, 10)], 10)
        await until(lambda: _applied(model, stories, 11))
        worker.stop()
        await task
        assert sum(sent) == 66
        info = await consumer(p, worker)
        assert int(info["num_ack_pending"]) == 0
        assert int(info["num_redelivered"]) == 0
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def test_a_build_acks_each_batch(projection: Projection) -> None:
    p = projection
    stories = story_ids(4)
    await seed(p.store, stories, 20)
    worker = Worker(p.nc, p.store, p.model("context", 1), p.dead_letters, p.settings.projector)
    await worker.run(until_caught_up=True)
    assert worker.stats.applied == 80
    assert not worker._held_acks
    assert int((await consumer(p, worker))["num_ack_pending"]) == 0


_HISTORIES: dict[str, list[Any]] = {}


def _event(story: str, i: int) -> NewEvent:
    history = _HISTORIES.setdefault(story, story_events(story, 20))
    return NewEvent(history[i])


async def _applied(model: ContextModel, stories: list[str], version: int) -> bool:
    for s in stories:
        doc = await model.read(s)
        if doc is None or doc["state"]["version"] < version:
            return False
    return True
