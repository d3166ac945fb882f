"""A story whose recorded times step back (JetStream stamps each message with its
stream leader's wall clock: after an NTP step back, or a leader moved to a server
whose clock is behind, a later version may carry an earlier time).

The state at time t is then the longest prefix of the story's events all recorded at
or before t (the version before the first one recorded after t: ``recorded_by``),
whichever path answers: the store's look-up, a read up to the time, a loader from
cold, a loader holding a run of events after a snapshot (and ``peek``), and the
archive reader before a compaction horizon."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetsource.archive.history import ArchivedHistory
from jetsource.core.envelope import ANY, NewEvent, RecordedEvent, recorded_by
from jetsource.domains.context.events import registry
from jetsource.domains.context.history import StateLoader
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.eventstore.horizon import BeyondHorizonError, Horizon
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import RawMessage
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.eventstore.snapshots import InMemorySnapshotStore
from tests.eventstore_fixtures import isolated_settings
from tests.history_fixtures import append_history, save_snapshots, state_at

SECOND = 1_000_000_000
BASE = 1_800_000_000 * SECOND
pytestmark = pytest.mark.asyncio


def step_back(store: InMemoryEventStore, times: dict[int, int]) -> list[RecordedEvent]:
    """Give the events at these versions these recorded times (what the stream would
    hold after a clock stepped back); the story's events as they now read."""
    log = []
    for subject, r in store._log:
        log.append((subject, replace(r, recorded_at_ns=times.get(r.version, r.recorded_at_ns))))
    store._log[:] = log
    by_agg: dict[str, list[RecordedEvent]] = {}
    for _, r in log:
        by_agg.setdefault(r.aggregate_id, []).append(r)
        store._by_event_id[r.event_id] = r
    store._by_aggregate.clear()
    store._by_aggregate.update(by_agg)
    return list(by_agg["s"])


def reference(records: list[RecordedEvent], t: int) -> int:
    """The rule, said independently of ``recorded_by``."""
    after = [r.version for r in records if r.recorded_at_ns > t]
    return (min(after) if after else len(records) + 1) - 1


class CompactedStore(InMemoryEventStore):
    """A live stream compacted behind versions 1..horizon: a time look-up that lands
    before it raises BeyondHorizonError, as the JetStream store's does."""

    horizon: Horizon | None = None

    async def read_aggregate(
        self, aggregate_id: str, from_version: int = 1, *args: Any, **kw: Any
    ) -> list[RecordedEvent]:
        if self.horizon is not None and from_version <= self.horizon.version:
            raise BeyondHorizonError(aggregate_id, self.horizon)
        return await super().read_aggregate(aggregate_id, from_version, *args, **kw)

    async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
        version = await super().version_at_time(aggregate_id, time)
        if self.horizon is not None and version < self.horizon.version:
            raise BeyondHorizonError(aggregate_id, self.horizon)
        return version


class FakeArchive(ArchivedHistory):
    """The archive reader over a fake live stream, its archived part the story's
    first versions (what the segments hold, read and checked)."""

    def __init__(self, live: CompactedStore, old: list[RecordedEvent]) -> None:
        super().__init__(live, archive=None)  # type: ignore[arg-type]
        self.old = old

    async def archived(self, aggregate_id: str, horizon: Horizon) -> list[RecordedEvent]:
        return self.old[: horizon.version]


async def test_a_time_between_stepped_back_times_answers_one_version() -> None:
    """v2 stamped by a clock 10 s ahead, v3 after it was stepped back; a time after v1
    and v3, before v2: v1 (v3 follows v2, which was recorded after it). A loader
    holding the events after a snapshot at v1 answered v3 (a state holding v2)."""
    store = InMemoryEventStore(registry)
    await append_history(store, "s", 4, seed=1)
    times = {1: BASE + SECOND, 2: BASE + 30 * SECOND, 3: BASE + 20 * SECOND, 4: BASE + 40 * SECOND}
    records = step_back(store, times)
    snapshots = InMemorySnapshotStore()
    await save_snapshots(snapshots, records, [1])
    t = BASE + 25 * SECOND

    cold = StateLoader(store, snapshots)
    first = (await cold.load("s", until=t)).state.version
    assert first == await store.version_at_time("s", t) == 1

    warm = StateLoader(store, snapshots)
    await warm.load("s")  # reads v2..v4 after the snapshot and keeps them
    again = await warm.load("s", until=t)
    assert again.state.version == first, f"cold {first}, warm {again.state.version}"
    assert again.state == state_at(records, 1)
    peeked = warm.peek("s", until_ns=t)
    assert peeked is None or peeked.version == 1


async def test_a_read_up_to_a_time_stops_at_the_first_event_recorded_after_it() -> None:
    """The in-memory store's read up to a time kept v3 (recorded by then) after
    leaving out v2 (recorded after it): a history with a hole."""
    store = InMemoryEventStore(registry)
    await append_history(store, "s", 4, seed=1)
    times = {1: BASE + SECOND, 2: BASE + 30 * SECOND, 3: BASE + 20 * SECOND, 4: BASE + 40 * SECOND}
    step_back(store, times)
    read = await store.read_aggregate("s", until_time=BASE + 25 * SECOND)
    assert [r.version for r in read] == [1]
    assert await store.read_aggregate("s", from_version=3, until_time=BASE + 25 * SECOND) == []


async def test_the_archive_reader_answers_the_prefix_before_its_horizon() -> None:
    """Before a compaction horizon the archive reader answered the last version
    recorded by then (v3 here), the live stream the prefix (v1)."""
    store = CompactedStore(registry)
    await append_history(store, "s", 6, seed=2)
    times = {
        1: BASE + SECOND,
        2: BASE + 30 * SECOND,
        3: BASE + 20 * SECOND,
        4: BASE + 40 * SECOND,
        5: BASE + 50 * SECOND,
        6: BASE + 60 * SECOND,
    }
    records = step_back(store, times)
    t = BASE + 25 * SECOND
    assert await store.version_at_time("s", t) == 1
    last = records[3]
    store.horizon = Horizon(4, last.stream_seq, last.recorded_at_ns)
    archive = FakeArchive(store, records)
    assert await archive.version_at_time("s", t) == 1
    assert [r.version for r in await archive.read_aggregate("s", until_time=t)] == [1]
    assert await archive.read_aggregate("s", from_version=3, until_time=t) == []


@st.composite
def stepped_histories(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 24))
    # Each event's clock: on from the one before, or now and then stepped back.
    on, back = st.integers(0, 10), st.integers(-20, -1)
    steps = draw(st.lists(st.one_of(on, on, on, back), min_size=n, max_size=n))
    times, now = [], BASE
    for s in steps:
        now += s * SECOND
        times.append(now)
    snapshots = draw(st.sets(st.integers(1, n), max_size=5))
    warm_to = draw(st.none() | st.integers(1, n))
    return {"n": n, "times": times, "snapshots": sorted(snapshots), "warm_to": warm_to}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=stepped_histories(), seed=st.integers(0, 2**16))
async def test_every_path_answers_the_same_version_at_every_time(
    h: dict[str, Any], seed: int
) -> None:
    n, times = h["n"], h["times"]
    store = CompactedStore(registry)
    await append_history(store, "s", n, seed=seed % 7)
    records = step_back(store, {v: t for v, t in enumerate(times, 1)})
    snapshots = InMemorySnapshotStore(keep=8)
    await save_snapshots(snapshots, records, h["snapshots"])
    probes = sorted({t + d for t in times for d in (-1, 0, 1)} | {min(times) - SECOND})
    random.Random(seed).shuffle(probes)

    warm = StateLoader(store, snapshots)  # holding a run after a snapshot, if any
    await warm.load("s", to_version=h["warm_to"])
    horizon = records[(n - 1) // 2]
    archive = FakeArchive(store, records)
    for t in probes:
        want = reference(records, t)
        assert recorded_by(records, t) == want
        assert await store.version_at_time("s", t) == want, t
        assert [r.version for r in await store.read_aggregate("s", until_time=t)] == list(
            range(1, want + 1)
        )
        cold = await StateLoader(store, snapshots).load("s", until=t)
        assert cold.state.version == want, ("cold", t)
        peeked = warm.peek("s", until_ns=t)
        assert peeked is None or peeked.version == want, ("peek", t)
        got = await warm.load("s", until=t)
        assert got.state.version == want, ("warm", t)
        assert got.state == state_at(records, want)
        store.horizon = Horizon(horizon.version, horizon.stream_seq, horizon.recorded_at_ns)
        try:
            assert await archive.version_at_time("s", t) == want, ("archive", t)
            read = await archive.read_aggregate("s", until_time=t)
            assert [r.version for r in read] == list(range(1, want + 1)), ("archive", t)
        finally:
            store.horizon = None


async def test_the_jetstream_look_up_reads_on_past_a_story_event_stamped_by_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-server's search by time (the first message stamped at or after a time, then
    the story's next one) takes stamps as never going backwards. Stream: a v1 at 1 s,
    b v1 at 30 s, a v2 at 20 s (stepped back), a v3 at 40 s; asked at 25 s it lands on
    a's v2, stamped by then: the store answered v1, the rule (and the in-memory store)
    v2."""
    memory = InMemoryEventStore(registry)
    a, b = story_events("a", 3, 1), story_events("b", 1, 1)
    await memory.append("a", [NewEvent(a[0])], ANY)
    await memory.append("b", [NewEvent(b[0])], ANY)
    await memory.append("a", [NewEvent(e) for e in a[1:]], ANY)
    stamps = {1: BASE + SECOND, 2: BASE + 30 * SECOND, 3: BASE + 20 * SECOND, 4: BASE + 40 * SECOND}
    log = [replace(r, recorded_at_ns=stamps[r.stream_seq]) for _, r in memory._log]
    memory._by_aggregate.clear()
    for r in log:
        memory._by_aggregate.setdefault(r.aggregate_id, []).append(r)
    t = BASE + 25 * SECOND
    assert await memory.version_at_time("a", t) == 2

    store = JetStreamEventStore(mock.MagicMock(), registry, isolated_settings("sb"))
    raws = [
        RawMessage(f"x.{r.aggregate_id}.e", r.stream_seq, r.recorded_at_ns, {}, b"") for r in log
    ]

    async def first_at_or_after(
        replies: Any, stream: str, time_ns: int, subject: str | None, timeout: float
    ) -> RawMessage | None:
        start = next((m.seq for m in raws if m.time_ns >= time_ns), None)  # as nats-server
        if start is None:
            return None
        story = subject.split(".")[-2] if subject else None
        return next(
            (m for m in raws[start - 1 :] if story in (None, m.subject.split(".")[1])), None
        )

    async def start() -> None:
        return None

    async def call(fn: Any) -> Any:
        return await fn()

    async def read_aggregate(aggregate_id: str, *args: Any, **kw: Any) -> list[RecordedEvent]:
        kw.pop("from_seq", None)
        return await memory.read_aggregate(aggregate_id, *args, **kw)

    versions = {r.stream_seq: r.version for r in log}
    monkeypatch.setattr(jsapi, "first_at_or_after", first_at_or_after)
    monkeypatch.setattr(store, "start", start)
    monkeypatch.setattr(store, "_call", call)
    monkeypatch.setattr(store, "read_aggregate", read_aggregate)
    monkeypatch.setattr(
        store, "_envelope", lambda raw: SimpleNamespace(aggregate_version=versions[raw.seq])
    )
    assert await store.version_at_time("a", t) == 2
    assert await store.version_at_time("a", BASE + 35 * SECOND) == 2  # lands on a's v3 (40 s)
    assert await store.version_at_time("b", t) == 0


async def test_a_jetstream_read_up_to_a_time_reads_the_story_past_the_stream_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read up to a time was bounded by the stream's last message before its first
    stamped after the time (seq_at_time): with a v1 at 1 s, b v1 at 30 s, a v2 at 20 s,
    a v3 at 40 s, a read of a up to 25 s held v1 only; the story's events recorded by
    then go on to v2 (the in-memory store's read and every version look-up)."""
    memory = InMemoryEventStore(registry)
    a, b = story_events("a", 3, 1), story_events("b", 1, 1)
    await memory.append("a", [NewEvent(a[0])], ANY)
    await memory.append("b", [NewEvent(b[0])], ANY)
    await memory.append("a", [NewEvent(e) for e in a[1:]], ANY)
    stamps = {1: BASE + SECOND, 2: BASE + 30 * SECOND, 3: BASE + 20 * SECOND, 4: BASE + 40 * SECOND}
    store = JetStreamEventStore(mock.MagicMock(), registry, isolated_settings("sb"))
    prefix = store._cfg.subject_prefix
    raws = [
        RawMessage(
            f"{prefix}.{r.aggregate_id}.{r.event_type}",
            r.stream_seq,
            stamps[r.stream_seq],
            {},
            r.envelope.SerializeToString(),
        )
        for _, r in memory._log
    ]

    async def first_at_or_after(
        replies: Any, stream: str, time_ns: int, subject: str | None, timeout: float
    ) -> RawMessage | None:
        start = next((m.seq for m in raws if m.time_ns >= time_ns), None)  # as nats-server
        if start is None:
            return None
        story = subject.split(".")[-2] if subject else None
        return next(
            (m for m in raws[start - 1 :] if story in (None, m.subject.split(".")[-2])), None
        )

    async def direct_get_page(
        replies: Any, stream: str, subject: str | None, from_seq: int, batch: int, timeout: float
    ) -> jsapi.Page:
        story = subject.split(".")[-2] if subject else None
        found = [m for m in raws[from_seq - 1 :] if story in (None, m.subject.split(".")[-2])]
        return jsapi.Page(found[:batch], len(found[batch:]))

    async def start() -> None:
        return None

    async def call(fn: Any) -> Any:
        return await fn()

    monkeypatch.setattr(jsapi, "first_at_or_after", first_at_or_after)
    monkeypatch.setattr(jsapi, "direct_get_page", direct_get_page)
    monkeypatch.setattr(store, "start", start)
    monkeypatch.setattr(store, "_call", call)
    t = BASE + 25 * SECOND
    assert [r.version for r in await store.read_aggregate("a", until_time=t)] == [1, 2]
    assert [r.version for r in await store.read_aggregate("a", until_time=t - 10 * SECOND)] == [1]
    assert [r.version for r in await store.read_aggregate("b", until_time=t)] == []
    assert [r.version for r in await store.read_aggregate("a", until_time=t + 20 * SECOND)] == [
        1,
        2,
        3,
    ]
