"""Replicas of one partitioned group started with different partition counts: lease
``p.<i>`` would name another partition in each (4 vs 8), so both would write the same
aggregates and some aggregates would have no worker. A replica joining a group that
splits the streams another way is refused (exit 1, the message names both counts);
two started at the same moment both let go of their leases and say why in /healthz."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest

from jetsource.core.envelope import NewEvent
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection
from jetsource.projection.host import ProjectorService
from jetsource.projection.partitions import (
    Lease,
    Leases,
    Membership,
    PartitionCountMismatch,
    mirror_stream,
)
from tests.integration.test_partitions import (  # noqa: F401 (the fixture)
    clean_digests_of,
    holders,
    projection,
    start_service,
    wait_holders,
)
from tests.projector_fixtures import drop_partition_mirrors

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


# -- the lease bucket deleted under a running group -------------------------------------


async def delete_bucket(p: Projection) -> None:
    o = p.settings.projector.partitions
    store = p.store_for("context")
    await store.start()
    await jsapi.api(store._replies, f"STREAM.DELETE.KV_{o.lease_bucket}", {}, 5)


async def test_a_deleted_lease_bucket_is_made_again_with_larger_tokens(
    projection: Projection,  # noqa: F811
) -> None:
    """The revisions are the fencing tokens the stores keep (only ever raised): a
    bucket made again from revision 1 gave every new owner a token below the stored
    one, its claim refused, the partition stalled for good. A member whose heartbeat
    finds the bucket gone makes it again and takes its leases again, with larger
    tokens; so does a member started after the deletion."""
    p = projection
    o = p.settings.projector.partitions

    async def nothing(_: Any) -> None:
        return None

    def member(name: str) -> Membership:
        return Membership(Leases(p.nc, o, o.group, name), 2, nothing, nothing, nothing)

    a = member("a")
    await a.leases.start()
    b = member("b")
    try:
        await a.tick()
        before = max(x.token for x in a.leases.held.values())
        await delete_bucket(p)
        await a.tick()  # makes it again; its renewals fail: the leases are lost
        await a.tick()  # and taken again
        assert set(a.leases.held) == {0, 1}
        assert min(x.token for x in a.leases.held.values()) > before
        newest = max(x.token for x in a.leases.held.values())
        # Purged (the stream keeps its sequence): lost, then taken again, larger.
        store = p.store_for("context")
        await jsapi.api(store._replies, f"STREAM.PURGE.KV_{o.lease_bucket}", {}, 5)
        await a.tick()
        await a.tick()
        assert set(a.leases.held) == {0, 1}
        assert min(x.token for x in a.leases.held.values()) > newest
        newest = max(x.token for x in a.leases.held.values())
        await a.leave()
        await delete_bucket(p)
        await b.leases.start()  # a member started after a deletion
        await b.tick()
        assert set(b.leases.held) == {0, 1}
        assert min(x.token for x in b.leases.held.values()) > newest
    finally:
        await b.leave()
        for m in (a, b):
            await m.leases.stop()


async def test_a_group_restarted_after_its_bucket_was_deleted_goes_on_writing(
    projection: Projection,  # noqa: F811
    tmp_path: Any,
) -> None:
    """End to end: a replica claims the fences in Valkey; the bucket is deleted; the
    replica is killed and another starts: it must apply the next events (it stalled,
    every claim refused by the stored, larger token)."""
    p = projection
    store = p.store_for("context")
    stories = [f"del-{i}" for i in range(8)]
    histories = {s: story_events(s, 6, 5) for s in stories}
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][:3]], 0)
    extra = {"JETSOURCE_PROJECTOR__MODELS": '["context"]'}
    logs = [(tmp_path / f"{n}.log").open("wb") for n in ("a", "b")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # The bucket has seen some use (another group's renewals): a's tokens are
        # above the first revisions of a bucket made again.
        o = p.settings.projector.partitions
        other = Leases(p.nc, o, "another-group", "x")
        await other.start()
        for _ in range(40):
            await other.heartbeat()
        await other.stop()
        procs.append(start_service(p, "a", logs[0], **extra))
        await until(p, 24, 60)
        await delete_bucket(p)
        procs[0].kill()
        procs[0].wait()
        procs.append(start_service(p, "b", logs[1], **extra))
        for s in stories:
            await store.append(s, [NewEvent(m) for m in histories[s][3:]], 3)
        took = await until(p, 48, 60)
        print(f"converged {took:.1f} s after the second replica started")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in logs:
            f.close()
    assert await applied(p) == 48  # once each


async def applied(p: Projection) -> int:
    return (await p.model("context", 1).checkpoint()).applied


async def until(p: Projection, count: int, timeout: float) -> float:
    started = time.monotonic()
    while (now := await applied(p)) != count:
        assert now < count, now  # never above: nothing applied twice
        assert time.monotonic() - started < timeout, (now, count)
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def test_healthz_names_membership_rounds_failing_past_the_lease_ttl(
    projection: Projection,  # noqa: F811
) -> None:
    """A replica whose membership rounds fail (the lease bucket unwritable, JetStream
    not answering for it) has lost its leases after the TTL: /healthz said 200 all
    along, its workers running on (fenced), or none at all. Now it names it, and
    clears once a round goes through again."""
    p = projection
    ttl = p.settings.projector.partitions.lease_ttl_s
    service = ProjectorService(p, group=f"gh{p.settings.projector.partitions.group}")
    service.options.models = ["context"]
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        started = time.monotonic()
        while not (service.membership and len(service.membership.leases.held) == 4):
            assert time.monotonic() - started < 30
            await asyncio.sleep(0.1)
        assert service.problems() == []
        leases = service.membership.leases
        heartbeat = leases.heartbeat

        async def refused() -> None:
            raise ConnectionError("the lease bucket does not answer")

        leases.heartbeat = refused  # type: ignore[method-assign]
        await asyncio.sleep(ttl + 1.0)
        problems = service.problems()
        assert any("no membership round" in x for x in problems), problems
        leases.heartbeat = heartbeat  # type: ignore[method-assign]
        started = time.monotonic()
        while service.problems():
            assert time.monotonic() - started < ttl + 5, service.problems()
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_the_whole_group_restarted_with_another_count_keeps_the_model_exact(
    projection: Projection,  # noqa: F811
    tmp_path: Any,
) -> None:
    """docs/scale-out.md: to change COUNT, stop the group and start it with the new
    count; the new consumers read from the replay start, what was applied counts as a
    duplicate. The model ends equal to a one-worker build, each event applied once."""
    p = projection
    store = p.store_for("context")
    stories = [f"recount-{i}" for i in range(8)]
    histories = {s: story_events(s, 6, 7) for s in stories}
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][:3]], 0)
    extra = {"JETSOURCE_PROJECTOR__MODELS": '["context"]'}
    logs = [(tmp_path / f"{n}.log").open("wb") for n in ("four", "eight")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_service(p, "four", logs[0], **extra))
        await until(p, 24, 60)
        procs[0].terminate()  # SIGTERM: hands its leases back
        assert await asyncio.to_thread(procs[0].wait, 30) == 0
        eight = {**extra, "JETSOURCE_PROJECTOR__PARTITIONS__COUNT": "8"}
        procs.append(start_service(p, "eight", logs[1], **eight))
        for s in stories:
            await store.append(s, [NewEvent(m) for m in histories[s][3:]], 3)
        await until(p, 48, 60)
        await asyncio.sleep(1.0)  # nothing more comes (the replay's duplicates)
        assert await applied(p) == 48
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in logs:
            f.close()
        await drop_partition_mirrors(p, 8)
    plain = await clean_digests_of(p, ("context",))
    assert await p.model("context", 1).digest() == plain["context"]


async def test_every_replica_killed_at_once_mid_batch_then_restarted_converges_once(
    projection: Projection,  # noqa: F811
    tmp_path: Any,
) -> None:
    """Two replicas killed with -9 together while events are being applied, then both
    started again: the leases expire (TTL), the model ends equal to a one-worker
    build, each event applied once; the time to converge is printed."""
    p = projection
    store = p.store_for("context")
    stories = [f"allkill-{i}" for i in range(12)]
    histories = {s: story_events(s, 20, 9) for s in stories}
    extra = {"JETSOURCE_PROJECTOR__MODELS": '["context"]'}
    logs = [(tmp_path / f"{n}.log").open("wb") for n in ("a", "b", "c", "d")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs += [start_service(p, n, logs[i], **extra) for i, n in enumerate("ab")]
        started = time.monotonic()
        while sorted((await holders(p)).values()) != ["a", "a", "b", "b"]:
            assert time.monotonic() - started < 60, await holders(p)
            await asyncio.sleep(0.1)

        async def write(s: str) -> None:
            for i in range(0, 20, 2):
                await store.append(s, [NewEvent(m) for m in histories[s][i : i + 2]], i)

        await asyncio.gather(*(write(s) for s in stories))
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
        assert await applied(p) <= 240
        restarted = time.monotonic()
        procs += [start_service(p, n, logs[2 + i], **extra) for i, n in enumerate("cd")]
        await until(p, 240, 90)
        print(f"converged {time.monotonic() - restarted:.1f} s after the restart")
        await asyncio.sleep(1.0)
        assert await applied(p) == 240
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in logs:
            f.close()
    plain = await clean_digests_of(p, ("context",))
    assert await p.model("context", 1).digest() == plain["context"]
