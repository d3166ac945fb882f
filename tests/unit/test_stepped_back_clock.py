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
    # Another story's message before each event (or none), stamped near it.
    others = draw(st.lists(st.none() | st.integers(-20, 20), min_size=n, max_size=n))
    return {
        "n": n,
        "times": times,
        "snapshots": sorted(snapshots),
        "warm_to": warm_to,
        "others": others,
    }


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
    stream: list[tuple[str, int, RecordedEvent | None]] = []
    for r, other in zip(records, h["others"], strict=True):
        if other is not None:
            stream.append(("o", r.recorded_at_ns + other * SECOND, None))
        stream.append(("s", r.recorded_at_ns, r))
    mp = pytest.MonkeyPatch()
    jetstream = fake_jetstream(mp, stream)
    try:
        await every_path(store, snapshots, warm, archive, jetstream, records, horizon, probes)
    finally:
        mp.undo()


async def every_path(
    store: CompactedStore,
    snapshots: InMemorySnapshotStore,
    warm: StateLoader,
    archive: FakeArchive,
    jetstream: JetStreamEventStore,
    records: list[RecordedEvent],
    horizon: RecordedEvent,
    probes: list[int],
) -> None:
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
        assert await jetstream.version_at_time("s", t) == want, ("jetstream", t)
        read = await jetstream.read_aggregate("s", until_time=t)
        assert [r.version for r in read] == list(range(1, want + 1)), ("jetstream read", t)
        store.horizon = Horizon(horizon.version, horizon.stream_seq, horizon.recorded_at_ns)
        try:
            assert await archive.version_at_time("s", t) == want, ("archive", t)
            read = await archive.read_aggregate("s", until_time=t)
            assert [r.version for r in read] == list(range(1, want + 1)), ("archive", t)
        finally:
            store.horizon = None


def fake_jetstream(
    mp: pytest.MonkeyPatch, stream: list[tuple[str, int, RecordedEvent | None]]
) -> JetStreamEventStore:
    """The JetStream store over a stream held here: (story, recorded time, its event or
    None for a message never read) at sequences 1, 2, ... The server's look-up by time
    is nats-server's: the first message stamped at or after the time, then the
    subject's next one."""
    store = JetStreamEventStore(mock.MagicMock(), registry, isolated_settings("sb"))
    prefix = store._cfg.subject_prefix
    raws = [
        RawMessage(
            f"{prefix}.{story}.{r.event_type if r else 'Other'}",
            seq,
            time_ns,
            {},
            r.envelope.SerializeToString() if r else b"",
        )
        for seq, (story, time_ns, r) in enumerate(stream, 1)
    ]

    def story_of(subject: str | None) -> str | None:
        return subject.split(".")[-2] if subject else None

    def ours(m: RawMessage, story: str | None) -> bool:
        return story in (None, story_of(m.subject))

    async def first_at_or_after(
        replies: Any, name: str, time_ns: int, subject: str | None, timeout: float
    ) -> RawMessage | None:
        start = next((m.seq for m in raws if m.time_ns >= time_ns), None)
        story = story_of(subject)
        return (
            None if start is None else next((m for m in raws[start - 1 :] if ours(m, story)), None)
        )

    async def last_for_subject(
        replies: Any, name: str, subject: str, timeout: float
    ) -> RawMessage | None:
        return next((m for m in reversed(raws) if ours(m, story_of(subject))), None)

    async def direct_get_page(
        replies: Any, name: str, subject: str | None, from_seq: int, batch: int, timeout: float
    ) -> jsapi.Page:
        found = [m for m in raws[from_seq - 1 :] if ours(m, story_of(subject))]
        return jsapi.Page(found[:batch], len(found[batch:]))

    async def start() -> None:
        return None

    async def call(fn: Any) -> Any:
        return await fn()

    mp.setattr(jsapi, "first_at_or_after", first_at_or_after)
    mp.setattr(jsapi, "last_for_subject", last_for_subject)
    mp.setattr(jsapi, "direct_get_page", direct_get_page)
    mp.setattr(store, "start", start)
    mp.setattr(store, "_call", call)
    return store


async def two_stories() -> list[tuple[str, int, RecordedEvent | None]]:
    """a v1 at 1 s, b v1 at 30 s, a v2 at 20 s (the clock stepped back), a v3 at 40 s."""
    memory = InMemoryEventStore(registry)
    a, b = story_events("a", 3, 1), story_events("b", 1, 1)
    await memory.append("a", [NewEvent(a[0])], ANY)
    await memory.append("b", [NewEvent(b[0])], ANY)
    await memory.append("a", [NewEvent(e) for e in a[1:]], ANY)
    stamps = {1: BASE + SECOND, 2: BASE + 30 * SECOND, 3: BASE + 20 * SECOND, 4: BASE + 40 * SECOND}
    return [(r.aggregate_id, stamps[r.stream_seq], r) for _, r in memory._log]


async def test_the_jetstream_look_up_reads_on_past_a_story_event_stamped_by_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-server's search by time takes stamps as never going backwards: asked for a
    at 25 s it lands on b's v1 (30 s), then on a's v2, stamped by then: the store
    answered v1, the rule (and the in-memory store) v2."""
    store = fake_jetstream(monkeypatch, await two_stories())
    t = BASE + 25 * SECOND
    assert await store.version_at_time("a", t) == 2
    assert await store.version_at_time("a", BASE + 35 * SECOND) == 2  # lands on a's v3
    assert await store.version_at_time("b", t) == 0


async def test_a_jetstream_read_up_to_a_time_reads_the_story_past_the_stream_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read up to a time was bounded by the stream's last message before its first
    stamped after the time (seq_at_time): a read of a up to 25 s held v1 only; the
    story's events recorded by then go on to v2 (as every version look-up says)."""
    store = fake_jetstream(monkeypatch, await two_stories())
    t = BASE + 25 * SECOND

    async def versions(story: str, until: int) -> list[int]:
        return [r.version for r in await store.read_aggregate(story, until_time=until)]

    assert await versions("a", t) == [1, 2]
    assert await versions("a", t - 10 * SECOND) == [1]
    assert await versions("b", t) == []
    assert await versions("a", t + 20 * SECOND) == [1, 2, 3]


async def test_the_jetstream_look_up_reads_on_no_further_than_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Landed on a story event stamped by then, the look-up read the rest of the story
    (every later event, for a long story many pages) to count the prefix; it reads up
    to the first event recorded after the time, and answers the same."""
    store = fake_jetstream(monkeypatch, await two_stories())
    read = store.read_aggregate
    got: list[list[RecordedEvent]] = []

    async def reading(*args: Any, **kwargs: Any) -> list[RecordedEvent]:
        got.append(await read(*args, **kwargs))
        return got[-1]

    monkeypatch.setattr(store, "read_aggregate", reading)
    t = BASE + 25 * SECOND
    assert await store.version_at_time("a", t) == 2
    assert [[r.version for r in rest] for rest in got] == [[2]]  # not a's v3 (40 s)
