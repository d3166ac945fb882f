"""Build progress that `projector status` shows, for builds that stop and parallel ones.

- A build stopped midway (Ctrl-C cancels it) kept the progress last saved, up to 2 s
  old: one stopped in its first seconds showed ``stopped 0.0%`` though thousands of
  events were applied. It now keeps where it got to.
- A parallel build (``--workers K``) never wrote its progress to the control entry:
  `status` showed ``building``, checkpoint 0, no percent, until it went live. And a
  partition whose worker had not made its consumer yet counted as nothing pending, so
  the build began at 100% and went backwards (a negative rate on the progress line).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from tests.projector_fixtures import context_projection, drop_partition_mirrors, seed, story_ids

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique) as p:
        yield p
        await drop_partition_mirrors(p, 2)


async def test_a_stopped_build_keeps_how_far_it_got(projection: Projection) -> None:
    p = projection
    await seed(p.store, story_ids(150), 100, batch=50)  # 15,000 events: a few seconds
    await p.control.ensure("context", 1)
    moved = asyncio.Event()

    def progress(done: int, total: int) -> None:
        if 0 < done < total:
            moved.set()

    build = asyncio.create_task(admin.rebuild(p, "context", 2, progress))
    await asyncio.wait_for(moved.wait(), 60)
    build.cancel()  # what Ctrl-C does to the command's main task
    with contextlib.suppress(asyncio.CancelledError):
        await build
    control = await p.control.get("context")
    assert control is not None
    kept = control.progress[2]
    checkpoint = (await p.model("context", 2).checkpoint()).seq
    assert 0 < checkpoint < 15_000
    assert kept["done"] >= checkpoint > 0, (kept, checkpoint)
    assert kept["percent"] > 0
    rows = {r["version"]: r for r in await admin.status(p) if r["model"] == "context"}
    assert rows[2]["state"] == "stopped" and rows[2]["progress"]["percent"] > 0
    # `wait` for it is refused at once, saying how to resume (it waited out its
    # timeout, exit 3, saying "state building").
    started = time.monotonic()
    with pytest.raises(admin.AdminError) as refused:
        await admin.wait(p, "context", 2, timeout_s=5)
    assert not isinstance(refused.value, admin.WaitTimeout)
    assert time.monotonic() - started < 3
    assert "stopped" in str(refused.value)
    assert "rebuild context --to-version 2" in str(refused.value)


async def test_a_parallel_build_keeps_its_progress_and_it_only_moves_forward(
    projection: Projection,
) -> None:
    p = projection
    await seed(p.store, story_ids(200), 100, batch=50)  # 20,000 events
    await p.control.ensure("context", 1)
    samples: list[tuple[int, int]] = []
    saved: list[dict[str, Any]] = []

    async def watch() -> None:
        while True:
            control = await p.control.get("context")
            entry = control.progress.get(2) if control is not None else None
            if entry:
                saved.append(entry)
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        report = await admin.rebuild(
            p, "context", 2, lambda done, total: samples.append((done, total)), workers=2
        )
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert report.applied == 20_000
    dones = [done for done, _ in samples]
    assert dones == sorted(dones), dones  # it began at 100% and went back
    assert dones[0] < 20_000
    assert saved, "no progress in the control entry while the parallel build ran"
    assert all(entry["total"] == 20_000 for entry in saved)


async def test_ctrl_c_stops_a_replay_even_when_a_store_call_swallowed_it(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C cancels the command's task; a store client below that turns the
    cancellation into an answer (as valkey and nats clients can, the error then retried
    as transient) let the replay run on to the end and exit 0, its run left ``running``
    in status when it did stop. It now stops at the next story, recorded ``stopped``."""
    p = projection
    await seed(p.store, story_ids(40), 5)
    await p.control.ensure("context", 1)
    await admin.rebuild(p, "context", 2)
    control = await p.control.get("context")
    assert control is not None
    control.active = 2
    await p.control.save("context", control)
    real = admin._replay_aggregate
    calls: list[str] = []
    entered = asyncio.Event()

    async def swallowing(p: Projection, model: Any, aggregate_id: str) -> tuple[int, int]:
        calls.append(aggregate_id)
        if len(calls) == 3:
            entered.set()
            with contextlib.suppress(asyncio.CancelledError):  # a library below did this
                await asyncio.sleep(30)
        return await real(p, model, aggregate_id)

    monkeypatch.setattr(admin, "_replay_aggregate", swallowing)
    run = asyncio.create_task(admin.replay(p, "context", from_seq=1, to_seq=200))
    await asyncio.wait_for(entered.wait(), 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 30)
    assert len(calls) == 3  # it stopped at the next story, not after all 40
    control = await p.control.get("context")
    assert control is not None and control.last_replay is not None
    assert control.last_replay["state"] == "stopped", control.last_replay
    assert control.last_replay["finished_at"]
