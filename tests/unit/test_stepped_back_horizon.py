"""A compacted story whose recorded times step back across its compaction horizon.

The live stream holds the story from its horizon on, the archive versions 1..horizon.
The state at time t is the story's prefix recorded by then (``recorded_by``) over the
whole history, as the in-memory store holding all of it answers. The JetStream store
decided that t needed the archive from the horizon event's own time: an archived
event stamped later than it (the clock stepped back after it) was missed, and a read
at such a t answered from the live stream, with it. The horizon now keeps the latest
time any archived version was recorded (``latest_ns``), and a time before it goes to
the archive."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetsource.archive.archiver import Archiver, CompactReport, _Candidate, to_archived
from jetsource.archive.history import ArchivedHistory
from jetsource.core.envelope import RecordedEvent, recorded_by
from jetsource.domains.context.events import registry
from jetsource.eventstore import horizon as horizons
from jetsource.eventstore import jsapi
from jetsource.eventstore.horizon import Horizon
from jetsource.eventstore.jetstream import H_RECORDED_AT, JetStreamEventStore
from jetsource.eventstore.jsapi import RawMessage
from jetsource.eventstore.memory import InMemoryEventStore
from tests.eventstore_fixtures import isolated_settings
from tests.history_fixtures import append_history
from tests.unit.test_stepped_back_clock import BASE, SECOND, step_back

pytestmark = pytest.mark.asyncio


class Archived(ArchivedHistory):
    """The archive reader, its segments holding the story's first versions."""

    def __init__(self, live: JetStreamEventStore, old: list[RecordedEvent]) -> None:
        super().__init__(live, archive=None)  # type: ignore[arg-type]
        self.old = old

    async def archived(self, aggregate_id: str, horizon: Horizon) -> list[RecordedEvent]:
        return self.old[: horizon.version]


def stamped(r: RecordedEvent, restored_at: int | None) -> tuple[int, dict[str, str]]:
    """A message's stamp and headers: its recorded time, or restored (an archive
    restore: stamped at the restore, first recorded at Jetsource-Recorded-At)."""
    if restored_at is None:
        return r.recorded_at_ns, {}
    return restored_at + r.stream_seq, {H_RECORDED_AT: str(r.recorded_at_ns)}


def compacted_jetstream(
    mp: pytest.MonkeyPatch,
    records: list[RecordedEvent],
    horizon: Horizon | None,
    restored_at: int | None = None,
) -> JetStreamEventStore:
    """The JetStream store of a compacted stream (age+compaction) holding the story's
    events after ``horizon`` at their sequences (those up to it purged), its horizon
    ``horizon`` (None: a stream that keeps its events). The server's look-up by time:
    the first message stamped at or after the time, then the subject's next one."""
    options: dict[str, Any] = {}
    if horizon is not None:
        options = {"retention": "age+compaction", "max_age_s": 3600.0}
    store = JetStreamEventStore(mock.MagicMock(), registry, isolated_settings("sbh", **options))
    prefix = store._cfg.subject_prefix
    raws = [
        RawMessage(
            f"{prefix}.{r.aggregate_id}.{r.event_type}",
            r.stream_seq,
            *stamped(r, restored_at),
            r.envelope.SerializeToString(),
        )
        for r in records
        if horizon is None or r.stream_seq > horizon.seq
    ]

    def ours(m: RawMessage, subject: str | None) -> bool:
        return subject is None or m.subject.startswith(subject[:-1])

    async def first_at_or_after(
        replies: Any, name: str, time_ns: int, subject: str | None, timeout: float
    ) -> RawMessage | None:
        start = next((i for i, m in enumerate(raws) if m.time_ns >= time_ns), None)
        if start is None:
            return None
        return next((m for m in raws[start:] if ours(m, subject)), None)

    async def last_for_subject(
        replies: Any, name: str, subject: str, timeout: float
    ) -> RawMessage | None:
        if name == horizons.kv_stream(store._cfg.stream):
            assert horizon is not None
            return RawMessage(subject, 1, BASE, {}, horizon.encode())
        return next((m for m in reversed(raws) if ours(m, subject)), None)

    async def direct_get_page(
        replies: Any, name: str, subject: str | None, from_seq: int, batch: int, timeout: float
    ) -> jsapi.Page:
        found = [m for m in raws if m.seq >= from_seq and ours(m, subject)]
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


async def stepped_story(times: list[int]) -> tuple[InMemoryEventStore, list[RecordedEvent]]:
    memory = InMemoryEventStore(registry)
    await append_history(memory, "s", len(times), seed=3)
    return memory, step_back(memory, {v: t for v, t in enumerate(times, 1)})


def horizon_at(
    records: list[RecordedEvent], version: int, restored_at: int | None = None
) -> Horizon:
    """The horizon the archiver records after sealing versions 1..version."""
    last = records[version - 1]
    latest = max(r.recorded_at_ns for r in records[:version])
    return Horizon(version, last.stream_seq, stamped(last, restored_at)[0], ("seg",), latest)


async def check_every_time(
    memory: InMemoryEventStore,
    records: list[RecordedEvent],
    store: Archived | JetStreamEventStore,
    more: tuple[int, ...] = (),
) -> None:
    probes = sorted({r.recorded_at_ns + d for r in records for d in (-1, 0, 1)} | set(more))
    for t in probes:
        want = recorded_by(records, t)
        assert await memory.version_at_time("s", t) == want
        assert await store.version_at_time("s", t) == want, ("version_at_time", t)
        read = await store.read_aggregate("s", until_time=t)
        assert [r.version for r in read] == list(range(1, want + 1)), ("read", t)


async def test_an_archived_event_stamped_after_the_horizon_event_is_not_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v2 at 30 s, v3 at 20 s (the clock stepped back), v4 at 40 s; compacted behind
    v3. Asked at 25 s the store took the time as after the horizon (v3's 20 s) and
    answered from the live stream: v3 (a state holding v2, recorded after 25 s). The
    whole history answers v1, and so does the archive."""
    memory, records = await stepped_story(
        [BASE + SECOND, BASE + 30 * SECOND, BASE + 20 * SECOND, BASE + 40 * SECOND]
    )
    horizon = horizon_at(records, 3)
    store = Archived(compacted_jetstream(monkeypatch, records, horizon), records)
    t = BASE + 25 * SECOND
    assert await memory.version_at_time("s", t) == 1
    assert await store.version_at_time("s", t) == 1
    assert [r.version for r in await store.read_aggregate("s", until_time=t)] == [1]
    await check_every_time(memory, records, store)


async def test_every_live_event_recorded_by_then_is_not_the_whole_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every live event recorded by the time asked (none after it to land on): the
    look-up answered the story's last version without asking the horizon, though an
    archived one (v2 at 30 s) was recorded after it."""
    memory, records = await stepped_story(
        [BASE + SECOND, BASE + 30 * SECOND, BASE + 10 * SECOND, BASE + 12 * SECOND]
    )
    store = Archived(compacted_jetstream(monkeypatch, records, horizon_at(records, 2)), records)
    t = BASE + 20 * SECOND
    assert await memory.version_at_time("s", t) == 1
    assert await store.version_at_time("s", t) == 1
    await check_every_time(memory, records, store)


@st.composite
def stepped(draw: st.DrawFn) -> tuple[list[int], int]:
    n = draw(st.integers(2, 16))
    steps = draw(
        st.lists(
            st.one_of(st.integers(0, 10), st.integers(0, 10), st.integers(-20, -1)),
            min_size=n,
            max_size=n,
        )
    )
    times, now = [], BASE
    for s in steps:
        now += s * SECOND
        times.append(now)
    return times, draw(st.integers(1, n - 1))  # never the last event archived


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=stepped())
async def test_archive_and_live_answer_the_whole_history_at_every_time(
    h: tuple[list[int], int],
) -> None:
    times, at = h
    memory, records = await stepped_story(times)
    mp = pytest.MonkeyPatch()
    try:
        store = Archived(compacted_jetstream(mp, records, horizon_at(records, at)), records)
        await check_every_time(memory, records, store)
    finally:
        mp.undo()


async def test_the_archiver_records_the_latest_time_it_archived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The horizon the archiver writes keeps the latest recorded time of the events it
    sealed (v2's 30 s), not only its last event's (v3's 20 s); sealing more keeps the
    latest of all, and a horizon written before it was kept counts its last time."""
    _, records = await stepped_story(
        [BASE + SECOND, BASE + 30 * SECOND, BASE + 20 * SECOND, BASE + 40 * SECOND]
    )
    store = JetStreamEventStore(
        mock.MagicMock(),
        registry,
        isolated_settings("sbha", retention="age+compaction", max_age_s=3600.0),
    )
    prefix = store._cfg.subject_prefix
    raws = [
        RawMessage(
            f"{prefix}.s.{r.event_type}",
            r.stream_seq,
            r.recorded_at_ns,
            {},
            r.envelope.SerializeToString(),
        )
        for r in records
    ]
    written: list[Horizon] = []
    kept: list[Horizon | None] = [None]

    async def read(replies: Any, stream: str, aggregate_id: str, timeout: float) -> Any:
        return None if kept[0] is None else (kept[0], 1)

    async def publish(replies: Any, msg: jsapi.OutMessage, timeout: float) -> None:
        written.append(Horizon.decode(msg.data))

    async def purge(*args: Any) -> int:
        return 0

    class Segments:
        async def write(self, messages: Any, ranges: Any) -> Any:
            entry = mock.Mock()
            entry.name = f"seg{len(written)}"
            return entry

    monkeypatch.setattr(horizons, "read", read)
    monkeypatch.setattr(jsapi, "publish", publish)
    monkeypatch.setattr(jsapi, "purge_subject_before", purge)
    archiver = Archiver(store, None, Segments())  # type: ignore[arg-type]
    archiver._bucket_ready = True

    async def seal(upto: int, start: int = 0) -> Horizon:
        picked = raws[start:upto]
        candidate = _Candidate(
            "s", [to_archived(m) for m in picked], list(range(start + 1, upto + 1))
        )
        await archiver._seal_and_purge([candidate], CompactReport("s", 0), None)
        return written[-1]

    first = await seal(3)
    assert (first.version, first.time_ns) == (3, BASE + 20 * SECOND)
    assert first.latest_ns == BASE + 30 * SECOND
    assert first.covers(BASE + 25 * SECOND) and not first.covers(BASE + 30 * SECOND)
    assert Horizon.decode(first.encode()) == first

    # Before latest_ns was kept: the horizon's last time is all it knows of 1..3.
    older = Horizon(3, records[2].stream_seq, BASE + 20 * SECOND, ("old",))
    assert b"latest_ns" not in older.encode() and Horizon.decode(older.encode()) == older
    assert not older.covers(BASE + 25 * SECOND)
    kept[0] = older
    more = await seal(4, start=3)
    assert more.version == 4 and more.segments == ("old", "seg1")
    assert more.latest_ns == BASE + 40 * SECOND


async def test_a_restored_story_is_looked_up_by_the_times_it_was_first_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An archive restore stamps each message anew (the time of the restore) and keeps
    the first one in Jetsource-Recorded-At, which reads take as the recorded time. The
    look-up by time asked nats-server by the new stamps: at any time before the
    restore it answered 0 (no state yet), a read up to the time the story's prefix."""
    memory, records = await stepped_story(
        [BASE + SECOND, BASE + 30 * SECOND, BASE + 20 * SECOND, BASE + 40 * SECOND]
    )
    at = BASE + 3600 * SECOND
    store = compacted_jetstream(monkeypatch, records, None, restored_at=at)
    assert await memory.version_at_time("s", BASE + 25 * SECOND) == 1
    assert await store.version_at_time("s", BASE + 25 * SECOND) == 1
    assert await store.version_at_time("s", BASE + 45 * SECOND) == 4
    await check_every_time(memory, records, store, (at, at + 2, at + 10))
    # After the restore's stamps: its last message, no read of the story.
    reads: list[Any] = []
    monkeypatch.setattr(store, "read_aggregate", lambda *a, **k: reads.append(a))
    assert await store.version_at_time("s", at + 10) == 4
    assert reads == []


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_a_restored_story_compacted_again_answers_the_whole_history(
    monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """The same story compacted behind ``version`` after the restore: its horizon's
    own time is the restore's stamp, later than every time the story was recorded;
    taken as the horizon's time, every time before it went to the archive, which
    answered at most the horizon's version."""
    memory, records = await stepped_story(
        [BASE + SECOND, BASE + 30 * SECOND, BASE + 20 * SECOND, BASE + 40 * SECOND]
    )
    at = BASE + 3600 * SECOND
    horizon = horizon_at(records, version, restored_at=at)
    store = Archived(compacted_jetstream(monkeypatch, records, horizon, restored_at=at), records)
    await check_every_time(memory, records, store, (at, at + 2, at + 10))


async def test_a_horizon_later_than_its_archived_versions_goes_on_in_the_live_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A horizon's latest time may be later than any archived version's (the stamp of
    a voided message sealed with them): asked between the two, the archive reader
    answered the horizon's version (every archived one recorded by then) though live
    versions after it were recorded by then too."""
    memory, records = await stepped_story(
        [BASE + SECOND, BASE + 2 * SECOND, BASE + 3 * SECOND, BASE + 40 * SECOND]
    )
    horizon = replace(horizon_at(records, 2), latest_ns=BASE + 30 * SECOND)
    store = Archived(compacted_jetstream(monkeypatch, records, horizon), records)
    assert await store.version_at_time("s", BASE + 10 * SECOND) == 3
    await check_every_time(memory, records, store, (BASE + 30 * SECOND,))
