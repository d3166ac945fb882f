"""Scale-out (#20) against real servers: the server's partitions, replicas sharing
them through leases (join, leave), fencing of a worker that lost its lease (in a
model's atomic write, Valkey and graph, and a process paused past its lease), and a
parallel rebuild equal to a single-worker one."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.graph import graph_run
from jetsource.projection.host import ProjectorService
from jetsource.projection.partitions import (
    Fence,
    FencedError,
    Leases,
    PartitionOptions,
    ensure_mirror,
    mirror_stream,
    part_root,
    partition_of,
    wait_mirror,
)
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorSettings
from tests.projector_fixtures import (
    drop_partition_mirrors,
    isolated_snapshots,
    projector_settings,
    seed,
    story_ids,
)

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


def partitioned(
    base: JetsourceSettings, unique: str, count: int, **options: Any
) -> ProjectorSettings:
    return projector_settings(
        base,
        unique,
        control_poll_s=0.2,
        partitions=PartitionOptions(
            count=count,
            lease_bucket=f"L_{unique}",
            lease_ttl_s=2.0,
            renew_every_s=0.3,
            group=f"g{unique}",
        ),
        **options,
    )


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(partitioned(settings, unique, 4))
    yield p
    for name in MODELS:
        for version in (1, 2, 3):
            await p.model(name, version).drop()
    await drop_partition_mirrors(p, 4)
    await p.close()


async def applied(p: Projection, name: str, version: int = 1) -> int:
    return (await p.model(name, version).checkpoint()).applied


async def converge(p: Projection, total: int, timeout: float = 60) -> None:
    started = time.monotonic()
    while True:
        counts = {m: await applied(p, m) for m in MODELS}
        if all(c == total for c in counts.values()):
            return
        # Never above: an event applied twice would count twice.
        assert all(c <= total for c in counts.values()), counts
        assert time.monotonic() - started < timeout, (counts, total)
        await asyncio.sleep(0.2)


async def clean_digests(p: Projection, version: int = 2) -> dict[str, str]:
    """Each model built again from the stream by one unpartitioned worker."""
    out = {}
    plain = p.settings.projector.model_copy(update={"partitions": PartitionOptions()})
    for name in MODELS:
        model = p.model(name, version)
        await model.drop()
        worker = Worker(p.nc, p.store_for(name), model, p.dead_letters, plain)
        await asyncio.wait_for(worker.run(until_caught_up=True), 120)
        out[name] = await model.digest()
    return out


async def test_the_server_partitions_by_aggregate_and_keeps_sequences(
    projection: Projection,
) -> None:
    p = projection
    store = p.store_for("context")
    await seed(store, story_ids(12), 2)
    s = store.settings
    await ensure_mirror(store._replies, s.stream, s.subject_prefix, 4, 1, 5.0)
    root = part_root(s.stream, 4)
    seen: dict[int, tuple[str, int]] = {}
    for _ in range(50):
        seen = {}
        async for raw in jsapi.direct_get_batch(
            store._replies, mirror_stream(s.stream, 4), f"{root}.>", 1, 5.0
        ):
            seen[raw.seq] = (raw.subject, raw.time_ns)
        if len(seen) == 24:
            break
        await asyncio.sleep(0.1)
    assert len(seen) == 24
    async for raw in jsapi.direct_get_batch(
        store._replies, s.stream, f"{s.subject_prefix}.>", 1, 5.0
    ):
        subject, time_ns = seen[raw.seq]  # same sequence, same time
        assert time_ns == raw.time_ns
        aggregate = raw.subject.split(".")[-2]
        assert (
            subject
            == f"{root}.{partition_of(aggregate, 4)}.{aggregate}.{raw.subject.split('.')[-1]}"
        )


@pytest.mark.chaos  # about 50 s on the shared 2-core machine: `make chaos`
async def test_replicas_share_partitions_join_and_leave_under_writes(
    projection: Projection, settings: JetsourceSettings, unique: str
) -> None:
    """A replica alone takes all 4 partitions; a second joins (2 + 2, handed over
    after the batch in progress); the first leaves (the second takes all). Writes go
    on throughout; every model equals a clean rebuild and counts each event once."""
    p = projection
    store = p.store_for("context")
    stories = story_ids(16)
    histories = {s: story_events(s, 24, 0) for s in stories}
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][:4]], 0)
    total = 16 * 4

    async def live_writes(stop: asyncio.Event) -> None:
        nonlocal total
        version = 4
        while not stop.is_set() and version < 24:
            for s in stories:
                await store.append(s, [NewEvent(histories[s][version])], version)
                total += 1
            version += 1
            await asyncio.sleep(0.05)

    second = await open_projection(partitioned(settings, unique, 4))
    a, b = ProjectorService(p, group="projector"), ProjectorService(second, group="projector")
    stop_a, stop_b, stop_w = asyncio.Event(), asyncio.Event(), asyncio.Event()
    run_a = asyncio.create_task(a.run(stop_a))
    writes = asyncio.create_task(live_writes(stop_w))
    try:
        # 4 partitions of the Valkey models, and a 5th unit: the graph, kept whole.
        await wait_for(lambda: len(held(a)) == 5, 15, "first replica takes all")
        run_b = asyncio.create_task(b.run(stop_b))
        await wait_for(lambda: {len(held(a)), len(held(b))} == {2, 3}, 15, "balanced 3 + 2")
        assert not set(held(a)) & set(held(b))
        await asyncio.sleep(1.0)
        stop_a.set()
        await run_a
        await wait_for(lambda: len(held(b)) == 5, 10, "the second takes all after a leave")
        await writes
        await converge(p, total)
    finally:
        stop_w.set()
        stop_a.set()
        stop_b.set()
        await asyncio.gather(run_a, writes, return_exceptions=True)
        if "run_b" in locals():
            await run_b
        await second.close()
    digests = {m: await p.model(m, 1).digest() for m in MODELS}
    assert digests == await clean_digests(p)


def held(service: ProjectorService) -> list[int]:
    return sorted(service.membership.leases.held) if service.membership else []


async def wait_for(cond: Any, timeout: float, what: str) -> None:
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, what
        await asyncio.sleep(0.05)


async def test_parallel_rebuild_equals_a_single_worker_rebuild(projection: Projection) -> None:
    """`rebuild --workers 3` (3 processes over the partitions) gives the digest of a
    one-worker build; then the unpartitioned service takes the version over at the
    sequence every partition reached, and keeps it equal under new writes."""
    p = projection
    store = p.store_for("context")
    stories = story_ids(30)
    histories = {s: story_events(s, 12, 1) for s in stories}
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][:10]], 0)
    single = await admin.rebuild(p, "context", 2)
    parallel = await admin.rebuild(p, "context", 3, workers=3)
    assert single.applied == parallel.applied == 300
    assert await p.model("context", 3).digest() == await p.model("context", 2).digest()
    # The service (unpartitioned) picks both versions up from where they are.
    plain = p.settings.projector.model_copy(update={"partitions": PartitionOptions()})
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][10:]], 10)
    for version in (2, 3):
        w = Worker(p.nc, store, p.model("context", version), p.dead_letters, plain)
        await asyncio.wait_for(w.run(until_caught_up=True), 60)
    assert await applied(p, "context", 3) == await applied(p, "context", 2) == 360
    assert await p.model("context", 3).digest() == await p.model("context", 2).digest()


# -- fencing ----------------------------------------------------------------------------


async def test_a_fenced_model_writes_nothing_once_a_newer_token_is_claimed(
    projection: Projection,
) -> None:
    """The check is in the model's own atomic write: the old owner's Valkey script and
    graph transaction are refused (FencedError) and leave the store as it was."""
    p = projection
    store = p.store_for("context")
    history = story_events("f1", 6, 0)
    await store.append("f1", [NewEvent(m) for m in history], 0)
    records = await store.read_aggregate("f1")
    assert len(records) == 6

    async def held() -> bool:
        return True

    for name in ("context", "graph"):
        old = Fence("g", 0, 10, held)
        new = Fence("g", 0, 11, held)
        zombie, owner = p.model(name, 1, old), p.model(name, 1, new)
        await zombie.setup()
        await old.claim()
        assert (await zombie.apply(records[:3])).applied == 3
        await new.claim()  # the new owner takes over
        before = await zombie.digest()
        with pytest.raises(FencedError):
            await zombie.apply(records[3:])
        assert await zombie.digest() == before, name
        with pytest.raises(FencedError):
            await old.claim()  # nor can the old one claim back
        assert (await owner.apply(records[3:])).applied == 3
        assert (await owner.checkpoint()).applied == 6


async def test_racing_first_graph_claims_leave_one_owner_and_one_fence_node(
    projection: Projection,
) -> None:
    """Two first claims at once can each find no fence node and create one (MATCH then
    CREATE). Written here as that race leaves it: two nodes, tokens 20 and 21. The
    older owner is fenced (the stored token is the largest), the newer one writes, and
    its next claim collapses the two nodes into one."""
    p = projection
    store = p.store_for("graph")
    await store.append("f2", [NewEvent(m) for m in story_events("f2", 4, 0)], 0)
    records = await store.read_aggregate("f2")

    async def held() -> bool:
        return True

    older, newer = Fence("race", 0, 20, held), Fence("race", 0, 21, held)
    zombie, owner = p.model("graph", 1, older), p.model("graph", 1, newer)
    await zombie.setup()
    label = f"{p.settings.projector.graph_label_prefix}JetsourceFence_race_0"
    database = p.settings.graph.database

    async def fence_tokens() -> list[int]:
        async with p.graph.session(database=database) as session:
            rows = await graph_run(session, f"MATCH (n:{label}) RETURN n.token AS t")
        return sorted(int(r["t"]) for r in rows)

    async with p.graph.session(database=database) as session:
        for token in (20, 21):
            await graph_run(session, f"CREATE (n:{label} {{token: $t, writes: 0}})", t=token)
    assert await fence_tokens() == [20, 21]
    before = await zombie.digest()
    with pytest.raises(FencedError):
        await zombie.apply(records)
    assert await zombie.digest() == before
    with pytest.raises(FencedError):
        await older.claim()
    assert (await owner.apply(records)).applied == 4
    await newer.claim()
    assert await fence_tokens() == [21]
    assert (await owner.checkpoint()).applied == 4


def service_env(p: Projection, member: str, **extra: str) -> dict[str, str]:
    from tests.integration.test_admin_contract import cli_env

    o = p.settings.projector.partitions
    return cli_env(p) | {
        "JETSOURCE_PROJECTOR__HTTP_PORT": "0",
        "JETSOURCE_PROJECTOR__PARTITIONS__COUNT": str(o.count),
        "JETSOURCE_PROJECTOR__PARTITIONS__LEASE_BUCKET": o.lease_bucket,
        "JETSOURCE_PROJECTOR__PARTITIONS__LEASE_TTL_S": str(o.lease_ttl_s),
        "JETSOURCE_PROJECTOR__PARTITIONS__RENEW_EVERY_S": str(o.renew_every_s),
        "JETSOURCE_PROJECTOR__PARTITIONS__GROUP": o.group,
        "JETSOURCE_PROJECTOR__PARTITIONS__MEMBER": member,
        **extra,
    }


def start_service(p: Projection, member: str, log: Any, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "jetsource.projector.server"],
        env=service_env(p, member, **extra),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def holders(p: Projection) -> dict[int, str]:
    o = p.settings.projector.partitions
    leases = Leases(p.nc, o, o.group, "observer")
    await leases.start()
    try:
        _, state = await leases.state()
        return {k: m for k, (m, _, _) in state.items() if m}
    finally:
        await leases.stop()


async def wait_holders(p: Projection, want: dict[int, str], timeout: float) -> float:
    started = time.monotonic()
    while (got := await holders(p)) != want:
        assert time.monotonic() - started < timeout, got
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_a_worker_paused_past_its_lease_writes_nothing_when_it_resumes(
    projection: Projection, tmp_path: Any
) -> None:
    await zombie_scenario(projection, tmp_path)


async def zombie_scenario(projection: Projection, tmp_path: Any) -> None:
    """SIGSTOP the owner of every partition with events delivered to it; a second
    replica takes the leases (and claims the fences) and is paused in turn; the first
    resumes alone: the model does not change. Then everything converges, once."""
    p = projection
    count = p.settings.projector.partitions.count
    store = p.store_for("context")
    stories = story_ids(10, "z")
    histories = {s: story_events(s, 8, 2) for s in stories}
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][:4]], 0)
    extra = {"JETSOURCE_PROJECTOR__MODELS": '["context"]', "JETSOURCE_PROJECTOR__ACK_WAIT_S": "10"}
    zlog, ylog = (tmp_path / "z.log").open("wb"), (tmp_path / "y.log").open("wb")
    z = start_service(p, "z", zlog, **extra)
    y: subprocess.Popen[bytes] | None = None
    try:
        await wait_holders(p, dict.fromkeys(range(count), "z"), 30)
        while await applied(p, "context") < 40:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        z.send_signal(signal.SIGSTOP)
        for s in stories:  # delivered to the paused owner's open pull requests
            await store.append(s, [NewEvent(m) for m in histories[s][4:]], 4)
        y = start_service(p, "y", ylog, **extra)
        await wait_holders(p, dict.fromkeys(range(count), "y"), 30)
        await asyncio.sleep(1.0)  # y has claimed the fences
        y.send_signal(signal.SIGSTOP)
        before = (await applied(p, "context"), await p.model("context", 1).digest())
        z.send_signal(signal.SIGCONT)
        await asyncio.sleep(4.0)
        after = (await applied(p, "context"), await p.model("context", 1).digest())
        assert after == before  # the zombie wrote nothing
        y.send_signal(signal.SIGCONT)
        started = time.monotonic()
        while await applied(p, "context") != 80:
            assert time.monotonic() - started < 60, await applied(p, "context")
            await asyncio.sleep(0.2)
    finally:
        for proc in (z, y):
            if proc is not None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        zlog.close()
        ylog.close()
    text = (tmp_path / "z.log").read_text()
    assert "lease lost" in text or "fenced" in text, text[-3000:]
    plain = await clean_digests_of(p, ("context",))
    assert await p.model("context", 1).digest() == plain["context"]


async def clean_digests_of(p: Projection, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    plain = p.settings.projector.model_copy(update={"partitions": PartitionOptions()})
    for name in names:
        model = p.model(name, 2)
        await model.drop()
        worker = Worker(p.nc, p.store_for(name), model, p.dead_letters, plain)
        await asyncio.wait_for(worker.run(until_caught_up=True), 120)
        out[name] = await model.digest()
    return out


async def test_partitioned_snapshotters_write_the_snapshots_one_snapshotter_writes(
    settings: JetsourceSettings, unique: str
) -> None:
    """Two snapshotter replicas over 4 partitions (the snapshots model is split like
    every other one) keep the same snapshots as one unpartitioned snapshotter."""
    shared = partitioned(settings, unique, 4, models=["snapshots"])
    shared = shared.model_copy(
        update={"snapshots": shared.snapshots.model_copy(update={"every": 3})}
    )
    one, two = await open_projection(shared), await open_projection(shared)
    plain_settings = shared.model_copy(
        update={
            "snapshots": isolated_snapshots(f"{unique}x", every=3),
            "projector": shared.projector.model_copy(update={"partitions": PartitionOptions()}),
        }
    )
    plain = await open_projection(plain_settings)
    try:
        store = one.store_for("snapshots")
        for s in story_ids(12, "n"):
            await store.append(s, [NewEvent(m) for m in story_events(s, 10, 4)], 0)
        a, b = (
            ProjectorService(one, group="snapshotter"),
            ProjectorService(two, group="snapshotter"),
        )
        stop = asyncio.Event()
        runs = [asyncio.create_task(a.run(stop)), asyncio.create_task(b.run(stop))]
        version = one.pinned_version("snapshots") or 1
        reference = plain.model("snapshots", version)
        worker = Worker(
            plain.nc,
            plain.store_for("snapshots"),
            reference,
            plain.dead_letters,
            plain_settings.projector,
        )
        await asyncio.wait_for(worker.run(until_caught_up=True), 60)
        want = await reference.digest()
        assert (await reference.checkpoint()).applied == 36  # 12 stories x 3 snapshots
        model = one.model("snapshots", version)
        started = time.monotonic()
        try:
            while await model.digest() != want:
                assert time.monotonic() - started < 60
                await asyncio.sleep(0.2)
            # The replicas share the partitions (the second may take its share a lease
            # tick after the first caught up on a loaded machine).
            await wait_for(lambda: len(held(a)) == len(held(b)) == 2, 30, "balanced 2 + 2")
            assert not set(held(a)) & set(held(b))
        finally:
            stop.set()
            await asyncio.gather(*runs)
    finally:
        await drop_partition_mirrors(one, 4)
        for p in (one, two, plain):
            await p.close()


async def test_reads_of_a_partitioned_stream_are_answered_by_the_origin(
    projection: Projection,
) -> None:
    """nats-server makes every mirror of a stream with direct gets one of its direct-get
    responders; the partition mirror (subjects mapped) answers a read by subject with
    "not found" and a read by sequence with its own subject. Every kind of read, and
    appends (their optimistic concurrency reads the tail), must see the origin alone:
    with two mirrors, each request has two chances in three of going to one."""
    p = projection
    store = p.store_for("context")
    histories = await seed(store, ["mirrored"], 5)
    s = store.settings
    replies, timeout = store._replies, s.request_timeout_s
    try:
        for count in (4, 2):
            await ensure_mirror(replies, s.stream, s.subject_prefix, count, 1, 5.0)
            await wait_mirror(replies, s.stream, count, 5.0)
        first = (await store.read_aggregate("mirrored"))[0]
        for i in range(20):  # each request goes to one of the direct-get responders
            events = await store.read_aggregate("mirrored")
            assert [e.version for e in events] == list(range(1, 6 + i))
            assert await store.last_version("mirrored") == 5 + i
            assert await store.version_at_time("mirrored", first.recorded_at_ns) == 1
            assert await store.seq_at_time(first.recorded_at_ns) == first.stream_seq
            by_seq = await jsapi.direct_get(replies, s.stream, {"seq": first.stream_seq}, timeout)
            assert by_seq is not None and by_seq.subject.startswith(s.subject_prefix + ".")
            assert await store.read_aggregate("never-written") == []
            assert [
                e.stream_seq async for e in store.read_all(first.stream_seq, first.stream_seq)
            ] == [first.stream_seq]
            # Appends read the tail: a mirror's "not found" would be a false conflict.
            await store.append("mirrored", [NewEvent(histories["mirrored"][-1])], 5 + i)
    finally:
        await drop_partition_mirrors(p, 4)
        await drop_partition_mirrors(p, 2)
