"""An identity service's start replays every link and merge of the stream (each one
settled once), and how long that takes. In `make test` small (500 links, 50 merges);
the measurement in docs/omni.md is the same test at size:

    OMNI_START_LINKS=10000 OMNI_START_MERGES=1000 \
        .venv/bin/pytest tests/integration/omni/test_identity_start_cost.py -s
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from jetsource._gen.omni.v1.lifecycle_pb2 import ExternalIdLinked, IdentityCreated
from jetsource.core.envelope import NO_STREAM, NewEvent, RecordedEvent
from jetsource.ingest.server import Ingest
from tests.integration.omni.test_identity_races import service

LINKS = max(100, int(os.environ.get("OMNI_START_LINKS", "500")))
pytestmark = pytest.mark.integration


async def test_start_replays_links(ingest: Ingest) -> None:
    store = ingest.store
    people = [f"idn-{k:026d}" for k in range(100)]
    for p in people:
        await store.append(p, [NewEvent(IdentityCreated(identity_id=p, created_by="t"))], NO_STREAM)
    t0 = time.perf_counter()
    per = LINKS // len(people)

    async def links(p: str, k0: int) -> None:
        for k in range(per):
            e = ExternalIdLinked(
                identity_id=p, provider="whatsapp", external_id=f"{k0}{k:05d}", linked_by="t"
            )
            await store.append(p, [NewEvent(e)], 1 + k)

    await asyncio.gather(*(links(p, i) for i, p in enumerate(people)))
    print(f"\n{LINKS} links appended in {time.perf_counter() - t0:.1f}s")
    for label in ("bucket empty (every handle written)", "bucket settled (a restart)"):
        ids, nc = await service(ingest)
        done, finished = 0, asyncio.Event()
        real = ids.settle_from

        async def counted(record: RecordedEvent, real: Any = real) -> None:
            nonlocal done
            await real(record)
            done += 1
            if done >= LINKS:
                finished.set()  # noqa: B023 (each pass waits for its own)

        ids.settle_from = counted  # type: ignore[method-assign]
        t = time.perf_counter()
        await ids.start(follow=True)
        await asyncio.wait_for(finished.wait(), 600)
        print(f"start with {label}: {time.perf_counter() - t:.2f}s for {done} links")
        await ids.close()
        await nc.drain()


MERGES = max(10, int(os.environ.get("OMNI_START_MERGES", "50")))


async def test_start_replays_merges(ingest: Ingest) -> None:
    admin, nc0 = await service(ingest)
    t0 = time.perf_counter()
    pairs = []
    for k in range(MERGES):
        a = await admin.create(f"A{k}", actor="t")
        b = await admin.create(f"B{k}", actor="t")
        await admin.link(b, "discord", f"9{k:06d}", actor="t")
        pairs.append((a, b))
    await asyncio.gather(*(admin.merge(a, b, actor="t") for a, b in pairs))
    print(f"\n{MERGES} merges made in {time.perf_counter() - t0:.1f}s")
    ids, nc = await service(ingest)
    done, finished = 0, asyncio.Event()
    real = ids.settle_from
    want = 3 * MERGES  # a link, the merged identity's record, the survivor's

    async def counted(record: RecordedEvent) -> None:
        nonlocal done
        await real(record)
        done += 1
        if done >= want:
            finished.set()

    ids.settle_from = counted  # type: ignore[method-assign]
    t = time.perf_counter()
    await ids.start(follow=True)
    await asyncio.wait_for(finished.wait(), 600)
    print(f"start with the bucket settled: {time.perf_counter() - t:.2f}s for {MERGES} merges")
    for s, c in ((ids, nc), (admin, nc0)):
        await s.close()
        await c.drain()
