"""Issue 23, freshness: the projector's delivery hands a partial batch to the model as
soon as it is there (an idle projector shows one event within milliseconds, not after
a fetch wait or a pull request's expiry), and fills batches when there is a backlog."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings, seed, story_ids

pytestmark = pytest.mark.integration

# What a delivery that waits would cost: the worker's wait for a batch (0.5 s), or
# the pull request's expiry (set short here so that the test sees requests expire).
FETCH_WAIT_S = 0.5
EXPIRES_S = 0.3
# Well below both, well above what it takes on a busy 2-core machine (a few ms): a
# delivery that held a partial batch for even part of the wait would miss it.
PROMPT_S = 0.05


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(
        projector_settings(settings, unique, pull_expires_s=EXPIRES_S, batch_size=500)
    )
    yield p
    await p.model("context", 1).drop()
    await p.close()


async def visible_after(p: Projection, model: ContextModel, story: str, count: int) -> list[float]:
    """Append ``count`` events to ``story`` one at a time, each once the projector
    idles again; seconds from the append until the context model shows each."""
    took = []
    for i, message in enumerate(story_events(story, count)):
        # Idle: the open pull requests expire meanwhile. The gap varies, so an append
        # lands at every phase of a worker that waited in steps (0.5 s apart).
        await asyncio.sleep(EXPIRES_S * 2 + (i * 0.37) % FETCH_WAIT_S)
        started = time.perf_counter()
        await p.store.append(story, [NewEvent(message)], i)
        while time.perf_counter() - started < 5:
            doc = await model.read(story)
            if doc and doc["state"]["version"] >= i + 1:
                break
            await asyncio.sleep(0.001)
        took.append(time.perf_counter() - started)
    return took


async def test_an_idle_projector_applies_one_event_at_once(projection: Projection) -> None:
    p = projection
    model = p.model("context", 1)
    assert isinstance(model, ContextModel)
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    task = asyncio.create_task(worker.run())
    try:
        took = await visible_after(p, model, "probe", 10)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert worker.stats.applied == 10
    # One event is a partial batch (batch_size 500): handed over as it arrives, also
    # after the outstanding pull requests expired while the projector was idle.
    assert statistics.median(took) < PROMPT_S < FETCH_WAIT_S, took
    assert max(took) < FETCH_WAIT_S, took


async def test_a_backlog_is_applied_in_full_batches(projection: Projection) -> None:
    p = projection
    stories = story_ids(20)
    await seed(p.store, stories, 60)  # 1,200 events waiting
    model = p.model("context", 1)
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await worker.run(until_caught_up=True)
    assert worker.stats.applied == 1200
    # Batches fill (500 at most): a handful of batches, not one per message.
    assert worker.stats.batches <= 12, worker.stats.batches


async def test_the_server_sends_the_heartbeats_a_pull_request_asks_for(
    projection: Projection,
) -> None:
    p = projection
    model = p.model("context", 1)
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await worker.ensure_consumer()
    pull = jsapi.PullConsumer(
        p.nc, p.store.settings.stream, model.spec.durable, batch=10, expires_s=1.0
    )
    try:
        assert await pull.next_batch(10, 0.05) == []
        asked = pull._last_request
        await asyncio.sleep(pull.heartbeat_s * 3)
        # Idle, and the server said so every heartbeat: the request is alive (not
        # refused as a bad request), and it is not asked again.
        assert pull.error is None
        assert pull._heard > asked
        assert time.monotonic() - pull._heard < pull.heartbeat_s * 2
        assert not pull._lost(time.monotonic())
    finally:
        await pull.stop()
