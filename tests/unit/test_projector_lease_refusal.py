"""A partitioned projector whose lease bucket refuses writes (a full JetStream store)
says why its leases expired: /healthz said only "no membership round for N s (lease
bucket JETSOURCE_LEASES): its leases have expired" and the log a bare
``JsApiError('JetStream error 503/10023: insufficient resources')``; both name the
bucket's stream, the condition and the way out now, and a round that succeeds clears
it (measured live: leases taken again within 2 s of space freed)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from jetsource.eventstore import jsapi
from jetsource.projection.host import ProjectorService
from jetsource.projection.partitions import PartitionOptions
from jetsource.projection.settings import ProjectorOptions


async def test_a_lease_bucket_refusing_writes_is_named_in_health_and_cleared() -> None:
    s: Any = ProjectorService.__new__(ProjectorService)
    s.stopping = False
    s.workers = {}
    s.unreachable = {}
    s.membership_failure = ""
    options = ProjectorOptions(partitions=PartitionOptions(renew_every_s=0.1, lease_ttl_s=0.5))
    s.projection = SimpleNamespace(
        nc=SimpleNamespace(is_connected=True),
        settings=SimpleNamespace(projector=options),
    )
    fails = True

    async def tick() -> None:
        if fails:
            raise jsapi.JsApiError(503, 10023, "insufficient resources")
        s.membership.last_tick = time.monotonic()

    s.membership = SimpleNamespace(
        tick=tick, conflict="", last_tick=time.monotonic() - 3 * options.partitions.lease_ttl_s
    )
    stop = asyncio.Event()
    loop = asyncio.create_task(ProjectorService._membership_loop(s, stop))
    await asyncio.sleep(0.05)
    problems = ProjectorService.problems(s)
    said = next(p for p in problems if p.startswith("no membership round"))
    assert "NATS JetStream refused the write to stream KV_JETSOURCE_LEASES" in said, said
    assert "insufficient storage" in said and "To recover: free space" in said, said

    fails = False
    await asyncio.sleep(options.partitions.renew_every_s + 0.2)  # the next round succeeds
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert s.membership_failure == ""
    assert not [p for p in ProjectorService.problems(s) if "membership" in p]
