"""Scale-out under faults (#20, `make chaos`): 3 projector processes share 8
partitions (and the graph's whole-stream unit) under live writes; one is killed -9,
one is added, another is killed -9. At the end every read model equals a clean
rebuild and counts each event once (no partition applied by two workers at once).
Failover (kill -9 to every partition held again) is printed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.samples import story_events
from jetsource.projection.bootstrap import Projection, open_projection
from tests.integration.test_partitions import (
    MODELS,
    applied,
    clean_digests,
    holders,
    partitioned,
    start_service,
    zombie_scenario,
)
from tests.projector_fixtures import drop_partition_mirrors, story_ids

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

COUNT = 8
UNITS = COUNT + 1  # the graph runs whole, under a lease of its own


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(partitioned(settings, unique, COUNT))
    yield p
    for name in MODELS:
        for version in (1, 2):
            await p.model(name, version).drop()
    await drop_partition_mirrors(p, COUNT)
    await p.close()


async def all_held_by(p: Projection, members: set[str], timeout: float) -> float:
    started = time.monotonic()
    while True:
        got = await holders(p)
        if len(got) == UNITS and set(got.values()) <= members:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, got
        await asyncio.sleep(0.05)


async def test_three_replicas_over_eight_partitions_kill_add_kill(
    projection: Projection, tmp_path: Path
) -> None:
    p = projection
    store = p.store_for("context")
    stories = story_ids(32, "k")
    histories = {s: story_events(s, 30, 3) for s in stories}
    written = 0
    stop_writes = asyncio.Event()

    async def writes() -> None:
        nonlocal written
        for version in range(30):
            for s in stories:
                if stop_writes.is_set():
                    return
                await store.append(s, [NewEvent(histories[s][version])], version)
                written += 1
            await asyncio.sleep(0.15)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = []

    def start(member: str) -> None:
        log = (tmp_path / f"{member}.log").open("wb")
        logs.append(log)
        procs[member] = start_service(p, member, log)

    failover: list[float] = []
    writer = asyncio.create_task(writes())
    try:
        for m in ("a", "b", "c"):
            start(m)
        await all_held_by(p, {"a", "b", "c"}, 60)
        started = time.monotonic()
        while set((await holders(p)).values()) != {"a", "b", "c"}:  # balanced: 3 + 3 + 3
            assert time.monotonic() - started < 30, await holders(p)
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        procs["a"].send_signal(signal.SIGKILL)
        failover.append(await all_held_by(p, {"b", "c"}, 30))
        start("d")
        started = time.monotonic()
        while "d" not in set((await holders(p)).values()):  # d takes its share
            assert time.monotonic() - started < 30, (tmp_path / "d.log").read_text()[-3000:]
            await asyncio.sleep(0.1)
        procs["b"].send_signal(signal.SIGKILL)
        failover.append(await all_held_by(p, {"c", "d"}, 30))
        await writer
        total = written
        started = time.monotonic()
        while {m: await applied(p, m) for m in MODELS} != dict.fromkeys(MODELS, total):
            counts = {m: await applied(p, m) for m in MODELS}
            # Each event counted once: never above the number written.
            assert all(c <= total for c in counts.values()), (counts, total)
            assert time.monotonic() - started < 120, (counts, total)
            await asyncio.sleep(0.3)
    finally:
        stop_writes.set()
        await asyncio.gather(writer, return_exceptions=True)
        for proc in procs.values():
            proc.kill()
            proc.wait()
        for log in logs:
            log.close()
    print(f"\nscale-out: {total} events; lease failover after kill -9: {failover} s")
    digests = {m: await p.model(m, 1).digest() for m in MODELS}
    assert digests == await clean_digests(p)


async def test_a_zombie_paused_past_its_lease_writes_nothing_over_eight_partitions(
    projection: Projection, tmp_path: Path
) -> None:
    """The SIGSTOP row of `make chaos`: the owner of all 8 partitions is paused with
    events delivered to it, a second replica takes over (and is paused in turn), the
    zombie resumes alone and changes nothing; then everything converges once."""
    await zombie_scenario(projection, tmp_path)
