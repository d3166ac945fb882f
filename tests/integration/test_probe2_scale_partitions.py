"""Replicas of one partitioned group started with different partition counts: lease
``p.<i>`` would name another partition in each (4 vs 8), so both would write the same
aggregates and some aggregates would have no worker. A replica joining a group that
splits the streams another way is refused (exit 1, the message names both counts);
two started at the same moment both let go of their leases and say why in /healthz."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest

from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection
from jetsource.projection.partitions import (
    Lease,
    Leases,
    Membership,
    PartitionCountMismatch,
    mirror_stream,
)
from tests.integration.test_partitions import (  # noqa: F401 (the fixture)
    holders,
    projection,
    start_service,
    wait_holders,
)

pytestmark = pytest.mark.integration


async def test_a_replica_with_another_partition_count_is_refused(
    projection: Projection,  # noqa: F811
    tmp_path: Any,
) -> None:
    p = projection
    extra = {"JETSOURCE_PROJECTOR__MODELS": '["context"]'}
    alog, blog = (tmp_path / "a.log").open("wb"), (tmp_path / "b.log").open("wb")
    a = start_service(p, "a", alog, **extra)
    b: subprocess.Popen[bytes] | None = None
    try:
        await wait_holders(p, dict.fromkeys(range(4), "a"), 60)
        b = start_service(p, "b", blog, **extra, JETSOURCE_PROJECTOR__PARTITIONS__COUNT="8")
        code = await asyncio.to_thread(b.wait, 60)
        assert code == 1, code
        text = (tmp_path / "b.log").read_text()
        assert "partition count mismatch" in text and "COUNT=4" in text, text[-3000:]
        assert "COUNT=8" in text and "projector failed: PartitionCountMismatch" in text, text
        # It changed nothing: a keeps every lease, and no mirror of 8 was made.
        assert await holders(p) == dict.fromkeys(range(4), "a")
        store = p.store_for("context")
        with pytest.raises(jsapi.JsApiError):
            await jsapi.api(
                store._replies,
                f"STREAM.INFO.{mirror_stream(store.settings.stream, 8)}",
                {},
                5,
            )
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        alog.close()
        blog.close()


async def test_members_started_at_once_with_different_counts_hold_nothing(
    projection: Projection,  # noqa: F811
) -> None:
    p = projection
    o = p.settings.projector.partitions

    async def nothing(_: Any) -> None:
        return None

    def member(name: str, count: int) -> Membership:
        options = o.model_copy(update={"count": count})
        return Membership(Leases(p.nc, options, o.group, name), count, nothing, nothing, nothing)

    a, b = member("a", 4), member("b", 8)
    for m in (a, b):
        await m.leases.start()
    try:
        await a.join()
        await b.join()  # both joined before either announced itself
        await a.tick()
        assert set(a.leases.held) == {0, 1, 2, 3}
        await b.tick()
        assert b.conflict and not b.leases.held
        await a.tick()
        assert "COUNT=8" in a.conflict
        for _ in range(20):  # a hands its leases back (after its workers stopped)
            if not await holders(p):
                break
            await asyncio.sleep(0.1)
        assert await holders(p) == {}
        c = member("c", 8)
        await c.leases.start()
        try:
            with pytest.raises(PartitionCountMismatch):
                await c.join()
        finally:
            await c.leases.stop()
        await b.leave()  # the odd one out goes: a takes its partitions again
        await a.tick()
        assert not a.conflict and set(a.leases.held) == {0, 1, 2, 3}
        assert all(isinstance(x, Lease) for x in a.leases.held.values())
    finally:
        await a.leave()
        for m in (a, b):
            await m.leases.stop()
