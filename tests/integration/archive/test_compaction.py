"""Compaction behind snapshots on a real nats-server, with a short horizon: the
time-travel answer for every version and many times before and after the horizon
equals a full fold of the original history; idempotency keys, snapshots and the
publisher's appends are unaffected; without the archive a read before the horizon
is refused naming it; what was purged is exactly what a verified segment holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from jetsource.client import ContextClient, error_details
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.commands import CommandHandler, CommandOptions
from jetsource.domains.context.history import StateLoader
from jetsource.domains.context.model import AddDecision
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.eventstore.horizon import BeyondHorizonError
from jetsource.eventstore.jetstream import stream_config
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.history import add_keys
from jetsource.publisher.server import build as build_publisher
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.history_fixtures import append_history, probe_times, save_snapshots, state_at
from tests.integration.archive.fixtures import (
    compact_at,
    compacting_settings,
    middle_time,
    reader,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> AsyncIterator[Projection]:
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    yield p
    await p.close()


async def test_time_travel_across_the_horizon_equals_a_full_fold(projection: Projection) -> None:
    p = projection
    histories = {}
    for i, sizes in enumerate(([1], [1, 3, 2], [2])):
        cid = f"tt{i}"
        histories[cid] = await append_history(p.store, cid, 45, seed=i, group_sizes=sizes)
        await save_snapshots(p.snapshots, histories[cid], [10, 20, 30, 40])
    records = histories["tt2"]
    compacted = await compact_at(p, middle_time(records))
    report = compacted.report
    assert report.purged == report.archived > 0
    assert report.aggregates == 3, report.kept

    # The live stream starts after the horizon now.
    for cid, recs in histories.items():
        h = await p.store.horizon(cid)
        assert h is not None and 1 <= h.version < len(recs)
        assert recs[h.version - 1].recorded_at_ns <= compacted.horizon_ns
        first = await jsapi.direct_get(
            p.store._replies,
            p.store.settings.stream,
            {"seq": 1, "next_by_subj": f"{p.store.settings.subject_prefix}.{cid}.>"},
            5.0,
        )
        assert first is not None and first.seq == recs[h.version].stream_seq

    history = reader(p)
    loader = StateLoader(history, p.snapshots, cache_size=8)
    bare = StateLoader(history, None)  # no snapshot: a full fold through the archive
    for cid, recs in histories.items():
        for v in range(1, len(recs) + 1):
            want = state_at(recs, v)
            assert (await loader.load(cid, to_version=v)).state == want, (cid, v)
            assert (await bare.load(cid, to_version=v)).state == want, (cid, v)
        for t in probe_times(recs):
            assert (await loader.load(cid, until=t)).state == state_at(recs, until=t), (cid, t)
        # The audit trail: every event, byte for byte, from the archive and the stream.
        again = await history.read_aggregate(cid)
        assert [(r.stream_seq, r.envelope.SerializeToString()) for r in again] == [
            (r.stream_seq, r.envelope.SerializeToString()) for r in recs
        ]
        page = await history.read_aggregate(cid, from_version=3, to_version=40)
        assert [r.version for r in page] == list(range(3, 41))
        # Idempotency keys through the snapshot are the full history's.
        keys: dict[str, tuple[int, int]] = {}
        add_keys(keys, recs)
        assert (await loader.load(cid, keys=True)).keys == keys
    # Snapshots of another schema on both sides of the horizon (never read), and a
    # snapshot between the horizon and the last one: the answers do not change.
    for cid, recs in histories.items():
        await save_snapshots(p.snapshots, recs, [44], old=[15, 35])
        fresh = StateLoader(history, p.snapshots, cache_size=8)
        for v in range(1, len(recs) + 1):
            assert (await fresh.load(cid, to_version=v)).state == state_at(recs, v), (cid, v)
        for t in probe_times(recs)[::3]:
            assert (await fresh.load(cid, until=t)).state == state_at(recs, until=t), (cid, t)


async def test_without_the_archive_reads_before_the_horizon_name_it(
    projection: Projection,
) -> None:
    p = projection
    records = await append_history(p.store, "nh", 40, seed=3)
    await save_snapshots(p.snapshots, records, [30])
    compacted = await compact_at(p, middle_time(records, 0.5))
    h = await p.store.horizon("nh")
    assert h is not None and h.version == compacted.report.archived
    live = StateLoader(p.store, p.snapshots)
    with pytest.raises(BeyondHorizonError, match=rf"versions 1..{h.version} .* compacted"):
        await live.load("nh", to_version=h.version - 1)
    with pytest.raises(BeyondHorizonError):
        await live.load("nh", until=records[0].recorded_at_ns)
    with pytest.raises(BeyondHorizonError):
        await p.store.read_aggregate("nh")
    # From the snapshot past the horizon on, the live stream alone answers, and right.
    for v in range(30, 41):
        assert (await live.load("nh", to_version=v)).state == state_at(records, v)
    for t in probe_times(records[29:]):
        if t >= records[29].recorded_at_ns:
            assert (await live.load("nh", until=t)).state == state_at(records, until=t)


async def test_the_publisher_keeps_appending_after_compaction(projection: Projection) -> None:
    p = projection
    records = await append_history(p.store, "pk", 30, seed=4)
    await save_snapshots(p.snapshots, records, [25])
    await compact_at(p, middle_time(records, 0.9))
    assert await p.store.last_version("pk") == 30
    more = story_events("pk", 40, 4)[30:]
    # Optimistic concurrency on the aggregate's last subject sequence still holds.
    result = await p.store.append("pk", [NewEvent(more[0])], 30)
    assert result.versions == [31]
    with pytest.raises(Exception, match="version 31"):
        await p.store.append("pk", [NewEvent(more[1])], 30)
    await p.store.append("pk", [NewEvent(e) for e in more[1:4]], 31)
    # A fresh store (no cached position) reads the tail the same way.
    p.store._positions.clear()
    assert await p.store.last_version("pk") == 34
    full = await reader(p).read_aggregate("pk")
    assert [r.version for r in full] == list(range(1, 35))


async def test_a_key_resent_after_its_events_were_compacted_is_a_duplicate(
    projection: Projection,
) -> None:
    """A command resent with a key whose events were compacted into the archive was
    answered FAILED_PRECONDITION BeyondHorizonError (the recall read the live stream
    only); it is the duplicate of the original, named from the archive when read."""
    p = projection
    records = await append_history(p.store, "ik", 30, seed=4)
    await save_snapshots(p.snapshots, records, [25])
    await compact_at(p, middle_time(records, 0.9))
    first = records[4]
    key = first.envelope.idempotency_key
    live_only = CommandHandler(p.store, loader=StateLoader(p.store, p.snapshots), cache_size=0)
    again = await live_only.execute("ik", AddDecision("dx", "x"), CommandOptions(key))
    assert again.duplicate and again.versions == [first.version]
    archived = CommandHandler(
        p.store, loader=StateLoader(p.store, p.snapshots), cache_size=0, history=reader(p)
    )
    again = await archived.execute("ik", AddDecision("dx", "x"), CommandOptions(key))
    assert again.duplicate and again.versions == [first.version]
    assert again.event_ids == [first.event_id]
    assert again.stream_seqs == [first.stream_seq]
    assert await p.store.last_version("ik") == 30


async def test_the_publisher_reads_a_compacted_history_through_the_archive(
    projection: Projection,
) -> None:
    """The publisher service on a compacted stream whose snapshots are gone (the
    snapshot stream lost, another schema's): a new command and a resent key answered
    FAILED_PRECONDITION naming the horizon (it read the live stream only); now the
    history is folded through the archive, the new command appends, the resent key is
    the duplicate of the original."""
    p = projection
    records = await append_history(p.store, "pa", 30, seed=4)
    await save_snapshots(p.snapshots, records, [25])
    await compact_at(p, middle_time(records, 0.9))
    await p.nc.jetstream().delete_stream(p.settings.snapshots.stream)  # snapshots lost
    shared = {name: getattr(p.settings, name) for name in JetsourceSettings.model_fields}
    publisher = await build_publisher(
        PublisherSettings(**shared, publisher=PublisherOptions(grpc_port=0, metrics_port=0))
    )
    try:
        async with ContextClient(f"127.0.0.1:{publisher.port}") as client:
            first = records[4]
            again = await client.add_decision(
                "pa", "dx", title="x", idempotency_key=first.envelope.idempotency_key
            )
            assert again.duplicate and list(again.event_ids) == [first.event_id]
            fresh = await client.add_decision("pa", "dnew", title="new", idempotency_key="new")
            assert fresh.version == 31 and not fresh.duplicate
    finally:
        await publisher.stop(0)
    # Told not to read the archive: refused naming the horizon (it was INTERNAL).
    shared["archive"] = shared["archive"].model_copy(update={"read": False})
    publisher = await build_publisher(
        PublisherSettings(**shared, publisher=PublisherOptions(grpc_port=0, metrics_port=0))
    )
    try:
        async with ContextClient(f"127.0.0.1:{publisher.port}") as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.add_decision("pa", "d2", title="two", idempotency_key="two")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_details(refused.value).reason == "BEFORE_HORIZON"
    finally:
        await publisher.stop(0)


async def test_only_events_covered_by_a_snapshot_and_never_the_last_are_purged(
    projection: Projection,
) -> None:
    p = projection
    a = await append_history(p.store, "cov", 20, seed=6)
    b = await append_history(p.store, "nosnap", 20, seed=7)
    c = await append_history(p.store, "last", 5, seed=8)
    await save_snapshots(p.snapshots, a, [8])
    await save_snapshots(p.snapshots, c, [5])
    compacted = await compact_at(p, max(b[-1].recorded_at_ns, c[-1].recorded_at_ns) + 1)
    assert (await p.store.horizon("cov")).version == 8  # type: ignore[union-attr]
    assert await p.store.horizon("nosnap") is None
    assert "nosnap" in compacted.report.kept
    assert (await p.store.horizon("last")).version == 4  # type: ignore[union-attr]
    assert await p.store.last_version("last") == 5
    assert [r.version for r in await p.store.read_aggregate("nosnap")] == list(range(1, 21))


def test_only_a_compacting_stream_allows_purge(settings: JetsourceSettings) -> None:
    from dataclasses import replace

    from jetsource.core.settings import EventStoreSettings
    from jetsource.projection.domain import Retention, StreamPolicy
    from tests.notes_domain import notes_domain

    assert stream_config(EventStoreSettings())["deny_purge"] is True
    # A domain's descriptor decides its stream's retention.
    notes = replace(
        notes_domain("pol"), policy=StreamPolicy(Retention.AGE_WITH_COMPACTION, 86400.0)
    )
    cfg = notes.eventstore(settings)
    assert (cfg.retention, cfg.max_age_s) == ("age+compaction", 86400.0)
    assert stream_config(cfg)["deny_purge"] is False
    assert notes_domain("pol").eventstore(settings).retention == "forever"
    assert stream_config(EventStoreSettings(retention="age", max_age_s=60))["max_age"] == 60 * 10**9
    compacting = stream_config(EventStoreSettings(retention="age+compaction", max_age_s=60))
    assert compacting["deny_purge"] is False and compacting["max_age"] == 0


async def test_a_stream_created_keep_forever_is_never_compacted(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> None:
    from jetsource.archive.archiver import ArchiveError, Archiver
    from jetsource.archive.history import open_archive
    from jetsource.core.settings import EventStoreSettings
    from jetsource.domains.context.events import registry
    from jetsource.domains.context.serialize import STATE_SCHEMA_VERSION
    from jetsource.eventstore.jetstream import JetStreamEventStore

    base = compacting_settings(settings, unique, tmp_path / "archive")
    forever = EventStoreSettings(stream=f"CE_{unique}", subject_prefix=f"ce{unique}.events")
    p = await open_projection(base.model_copy(update={"eventstore": forever}))
    # The same stream, now configured to compact: the server keeps its deny_purge.
    compacting = JetStreamEventStore(p.nc, registry, base.eventstore)
    try:
        records = await append_history(p.store, "kf", 10, seed=1)
        await save_snapshots(p.snapshots, records, [8])
        archive = open_archive(base, base.eventstore.stream)
        archiver = Archiver(compacting, p.snapshots, archive, STATE_SCHEMA_VERSION)
        with pytest.raises(ArchiveError, match="deny_purge"):
            await archiver.compact(now=records[-1].recorded_at_ns + 10**13)
        assert await archive.entries() == []  # nothing sealed either
        assert [r.version for r in await compacting.read_aggregate("kf")] == list(range(1, 11))
    finally:
        await compacting.close()
        await p.close()


@pytest.mark.parametrize("forged", ["another event", "another recorded time"])
async def test_a_snapshot_readers_skip_covers_nothing_to_compact(
    projection: Projection, forged: str
) -> None:
    """The archiver took the latest snapshot's version and stream sequence as they
    said: one not taken at its event (readers check the event at its stream sequence
    is its version, recorded at its time, and skip it) let v1..v8 be purged behind a
    snapshot no read starts from. Now the aggregate is kept, saying why."""
    from dataclasses import replace

    from tests.history_fixtures import snapshot_at

    p = projection
    recs = await append_history(p.store, "forged", 20, seed=9)
    good = snapshot_at(recs, 8)
    bad = (
        replace(good, last_seq=recs[11].stream_seq)
        if forged == "another event"
        else replace(good, recorded_at_ns=good.recorded_at_ns + 1)
    )
    await p.snapshots.save(bad)
    compacted = await compact_at(p, recs[-1].recorded_at_ns + 1)
    assert await p.store.horizon("forged") is None  # before: v8
    assert "not of its history" in compacted.report.kept["forged"]
    assert [r.version for r in await p.store.read_aggregate("forged")] == list(range(1, 21))
    await p.snapshots.save(snapshot_at(recs, 10))  # a real one: compacted behind
    await compact_at(p, recs[-1].recorded_at_ns + 1)
    assert (await p.store.horizon("forged")).version == 10  # type: ignore[union-attr]
