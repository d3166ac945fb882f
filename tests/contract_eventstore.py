"""The event store contract: every adapter passes these (JetStream and in-memory)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import ANY, NO_STREAM, NewEvent
from jetsource.core.errors import (
    ConcurrencyError,
    EventTooLargeError,
    InvalidAggregateIdError,
    PartlyStoredError,
    UnknownEventTypeError,
    ValidationError,
)
from tests.eventstore_fixtures import created, decision

Store = Any


async def count_all(store: Store) -> int:
    return len([r async for r in store.read_all()])


class EventStoreContract:
    """Subclass with a ``store`` fixture yielding a fresh, empty store."""

    async def test_append_and_read_back(self, store: Store) -> None:
        first = await store.append("story-1", [created("hello")], NO_STREAM)
        assert first.versions == [1] and not first.duplicate
        more = await store.append("story-1", [decision(1), decision(2)], 1)
        assert more.versions == [2, 3]
        assert more.stream_seqs == [first.stream_seqs[0] + 1, first.stream_seqs[0] + 2]

        events = await store.read_aggregate("story-1")
        assert [e.version for e in events] == [1, 2, 3]
        assert [e.event_type for e in events] == [
            "ContextCreated",
            "DecisionAdded",
            "DecisionAdded",
        ]
        assert events[0].event == ev.ContextCreated(title="hello", created_by="tester")
        assert events[1].event_id == more.event_ids[0]
        assert all(e.envelope.aggregate_type for e in events)
        assert all(e.recorded_at_ns > 0 for e in events)
        assert await store.last_version("story-1") == 3
        assert await store.last_version("nobody") == 0

    async def test_envelope_carries_metadata(self, store: Store) -> None:
        new = NewEvent(
            ev.ContextCreated(title="t"),
            causation_id="cause",
            correlation_id="corr",
            idempotency_key="key-1",
            source="tests",
            parent_aggregate_id="parent",
            metadata={"actor": "alice"},
            occurred_at_ns=1_700_000_000_123_456_789,
        )
        await store.append("meta", [new], NO_STREAM)
        (read,) = await store.read_aggregate("meta")
        env = read.envelope
        assert (env.causation_id, env.correlation_id, env.idempotency_key) == (
            "cause",
            "corr",
            "key-1",
        )
        assert (env.source, env.parent_aggregate_id, dict(env.metadata)) == (
            "tests",
            "parent",
            {"actor": "alice"},
        )
        assert env.occurred_at.seconds == 1_700_000_000 and env.occurred_at.nanos == 123_456_789
        assert env.schema_version == 1 and env.event_id == new.event_id

    async def test_wrong_expected_version_is_a_conflict_naming_the_actual(
        self, store: Store
    ) -> None:
        await store.append("c", [created(), decision(1)], NO_STREAM)
        with pytest.raises(ConcurrencyError) as err:
            await store.append("c", [decision(2)], 1)
        assert err.value.actual == 2
        assert "version 2" in str(err.value)
        with pytest.raises(ConcurrencyError):
            await store.append("c", [decision(3)], NO_STREAM)
        assert await store.last_version("c") == 2

    async def test_five_event_append_that_conflicts_stores_none(self, store: Store) -> None:
        await store.append("five", [created()], NO_STREAM)
        await store.append("five", [decision(0)], 1)
        before = await count_all(store)
        with pytest.raises(ConcurrencyError):
            await store.append("five", [decision(i) for i in range(1, 6)], 1)
        assert await count_all(store) == before
        assert await store.last_version("five") == 2

    async def test_any_appends_after_whatever_is_there(self, store: Store) -> None:
        await store.append("any", [created()], ANY)
        result = await store.append("any", [decision(1), decision(2)], ANY)
        assert result.versions == [2, 3]

    async def test_same_event_ids_again_return_the_original_result(self, store: Store) -> None:
        single = [created()]
        batch = [decision(i) for i in range(4)]
        first = await store.append("idem", single, NO_STREAM)
        second = await store.append("idem", batch, 1)
        before = await count_all(store)

        again_single = await store.append("idem", single, NO_STREAM)
        again_batch = await store.append("idem", batch, 1)
        assert (again_single.versions, again_single.stream_seqs) == (
            first.versions,
            first.stream_seqs,
        )
        assert (again_batch.versions, again_batch.stream_seqs) == (
            second.versions,
            second.stream_seqs,
        )
        assert again_single.duplicate and again_batch.duplicate
        # Also under ANY, and after more events were appended by others.
        await store.append("idem", [decision(99)], ANY)
        again_any = await store.append("idem", batch, ANY)
        assert again_any.versions == second.versions
        assert await count_all(store) == before + 1

    async def test_an_append_stored_in_part_is_refused_and_stores_nothing(
        self, store: Store
    ) -> None:
        """Some of an append's events stored (by an append of their own), not all:
        never answered as a duplicate (the others would get the positions of events
        before the stored one, and be lost), never appended again."""
        await store.append("part", [created()], NO_STREAM)
        a, b, c = decision(1), decision(2), decision(3)
        stored = await store.append("part", [b], ANY)  # b is the aggregate's tail
        before = await count_all(store)
        for events, expected in (
            ([a, b], ANY),  # the last one stored, at the tail
            ([b, c], ANY),
            ([a, b, c], ANY),
            ([a, b], 2),
        ):
            with pytest.raises(PartlyStoredError) as err:
                await store.append("part", events, expected)
            assert err.value.stored == [b.event_id]
            assert isinstance(err.value, ConcurrencyError)
            assert "not all of them" in str(err.value)
        assert await count_all(store) == before
        again = await store.append("part", [b], ANY)
        assert (again.versions, again.stream_seqs, again.duplicate) == (
            stored.versions,
            stored.stream_seqs,
            True,
        )
        # Each on its own: a and c appended, b answered where it is.
        await store.append("part", [a], ANY)
        await store.append("part", [c], ANY)
        records = (await store.read_aggregate("part"))[1:]
        assert [r.event_id for r in records] == [b.event_id, a.event_id, c.event_id]
        # Every one stored, by appends of their own: each answered where it is.
        whole = await store.append("part", [a, b, c], ANY)
        assert whole.duplicate
        assert whole.stream_seqs == [records[i].stream_seq for i in (1, 0, 2)]
        assert whole.versions == [records[i].version for i in (1, 0, 2)]
        assert await count_all(store) == before + 2

    async def test_fifty_concurrent_writers_on_one_aggregate(self, store: Store) -> None:
        await store.append("hot", [created()], NO_STREAM)
        conflicts = 0

        async def writer(n: int) -> None:
            nonlocal conflicts
            event = decision(n)  # same event id on every retry
            for _ in range(500):
                version = await store.last_version("hot")
                try:
                    await store.append("hot", [event], version)
                    return
                except ConcurrencyError:
                    conflicts += 1
                    await asyncio.sleep(0)
            raise AssertionError(f"writer {n} never got through")

        await asyncio.gather(*(writer(n) for n in range(50)))
        events = await store.read_aggregate("hot")
        assert [e.version for e in events] == list(range(1, 52))
        ids = [e.event.decision_id for e in events[1:]]
        assert sorted(ids) == sorted(f"d{n}" for n in range(50))  # none lost, none twice

    async def test_time_bounded_reads_are_exact(self, store: Store) -> None:
        for i in range(4):
            await store.append("clock", [decision(i)], i)
            await asyncio.sleep(0.003)
        events = await store.read_aggregate("clock")
        times = [e.recorded_at_ns for e in events]
        assert times == sorted(times) and len(set(times)) == 4

        async def versions(until: int) -> list[int]:
            return [e.version for e in await store.read_aggregate("clock", until_time=until)]

        assert await versions(times[0] - 1) == []
        assert await versions(times[0] - 1_000_000) == []
        assert await versions(times[0]) == [1]
        assert await versions(times[1] - 1) == [1]
        assert await versions(times[1]) == [1, 2]
        assert await versions(times[1] + 1) == [1, 2]
        assert await versions(times[2] - 1_000_000) == [1, 2]
        assert await versions(times[2] + 1_000_000) == [1, 2, 3]
        assert await versions(times[3]) == [1, 2, 3, 4]
        assert await versions(times[3] + 10**12) == [1, 2, 3, 4]

        assert await store.seq_at_time(times[0] - 1) == 0
        assert await store.seq_at_time(times[1]) == events[1].stream_seq
        assert await store.seq_at_time(times[2] - 1) == events[1].stream_seq

    async def test_version_at_time_among_other_aggregates(self, store: Store) -> None:
        for i in range(4):
            await store.append("when", [created() if i == 0 else decision(i)], i)
            await asyncio.sleep(0.003)
            await store.append(f"other-{i}", [created()], NO_STREAM)
            await asyncio.sleep(0.003)
        await store.append("when", [decision(10), decision(11)], 4)  # one time for both
        events = await store.read_aggregate("when")
        times = [e.recorded_at_ns for e in events]
        assert times == sorted(times)
        for e in events:
            t = e.recorded_at_ns
            expected = max(r.version for r in events if r.recorded_at_ns <= t)
            assert await store.version_at_time("when", t) == expected
            assert await store.version_at_time("when", t - 1) == expected - sum(
                1 for r in events if r.recorded_at_ns == t
            )
        assert await store.version_at_time("when", times[0] - 1_000_000) == 0
        assert await store.version_at_time("when", times[-1] + 1) == 6
        assert await store.version_at_time("when", times[-1] + 10**18) == 6  # year 2200+
        assert await store.version_at_time("nobody", times[-1]) == 0
        with pytest.raises(ValidationError):
            await store.version_at_time("bad.id", times[-1])

    async def test_version_ranges(self, store: Store) -> None:
        await store.append("range", [created(), *[decision(i) for i in range(9)]], NO_STREAM)
        got = await store.read_aggregate("range", from_version=3, to_version=6)
        assert [e.version for e in got] == [3, 4, 5, 6]
        assert await store.read_aggregate("range", from_version=11) == []
        with pytest.raises(ValidationError):
            await store.read_aggregate("range", from_version=0)

    async def test_bounded_reads_of_interleaved_aggregates_are_exact(self, store: Store) -> None:
        """Every combination of version range, start hint and sequence bound gives
        exactly the matching events, with another aggregate's events in between."""
        for i in range(10):
            for agg in ("left", "right"):
                v = await store.last_version(agg)
                batch = ([created()] if v == 0 else []) + [
                    decision(10 * v + j) for j in range(1 + i % 3)
                ]
                await store.append(agg, batch, v)
        full = await store.read_aggregate("left")
        n, seqs = len(full), [r.stream_seq for r in full]
        assert [r.version for r in full] == list(range(1, n + 1))
        others = [r.stream_seq for r in await store.read_aggregate("right")]
        last_seq = max(seqs[-1], others[-1])

        def expected(lo: int, hi: int | None, to_seq: int | None) -> list[int]:
            return [
                r.version
                for r in full
                if r.version >= lo
                and (hi is None or r.version <= hi)
                and (to_seq is None or r.stream_seq <= to_seq)
            ]

        for lo in (1, 2, n // 2, n, n + 1):
            hints = [1] + ([seqs[lo - 2] + 1] if 2 <= lo <= n + 1 else [])
            bounds: list[int | None] = [None, 0, last_seq + 100]
            if lo <= n:
                bounds += [seqs[lo - 1], seqs[lo - 1] - 1, seqs[min(lo + 2, n - 1)]]
                bounds += [s for s in others if s > seqs[lo - 1]][:1]  # between them
            for hi in (None, lo - 1, lo, lo + 3, n, n + 5):
                for hint in hints:
                    for to_seq in bounds:
                        got = await store.read_aggregate(
                            "left", from_version=lo, to_version=hi, from_seq=hint, to_seq=to_seq
                        )
                        assert [r.version for r in got] == expected(lo, hi, to_seq), (
                            lo,
                            hi,
                            hint,
                            to_seq,
                        )
                        assert [r.stream_seq for r in got] == [seqs[r.version - 1] for r in got]

    async def test_read_all_in_global_order_with_filters(self, store: Store) -> None:
        a = await store.append("a", [created(), decision(1)], NO_STREAM)
        b = await store.append("b", [created()], NO_STREAM)
        await store.append("a", [decision(2)], 2)
        everything = [r async for r in store.read_all()]
        assert [r.stream_seq for r in everything] == sorted(r.stream_seq for r in everything)
        assert [(r.aggregate_id, r.version) for r in everything] == [
            ("a", 1),
            ("a", 2),
            ("b", 1),
            ("a", 3),
        ]
        window = [
            r async for r in store.read_all(from_seq=a.stream_seqs[1], to_seq=b.stream_seqs[0])
        ]
        assert [(r.aggregate_id, r.version) for r in window] == [("a", 2), ("b", 1)]

    @pytest.mark.parametrize(
        "bad",
        ["has.dot", "has space", "star*", "gt>", "", "x" * 129, "tab\t", "-leading", "ünï"],
    )
    async def test_bad_aggregate_ids_are_rejected_and_store_nothing(
        self, store: Store, bad: str
    ) -> None:
        with pytest.raises(InvalidAggregateIdError, match="aggregate_id"):
            await store.append(bad, [created()], ANY)
        assert await count_all(store) == 0

    async def test_oversized_payload_is_rejected(self, store: Store) -> None:
        huge = NewEvent(ev.DecisionAdded(decision_id="d", body="x" * 2_000_000))
        with pytest.raises(EventTooLargeError, match="bytes") as caught:
            await store.append("big", [created(), huge], NO_STREAM)
        # Its place among the events appended: callers (the sessions emitter, import)
        # replace or name that event by it.
        assert caught.value.index == 1
        assert await count_all(store) == 0
        with pytest.raises(EventTooLargeError) as caught:
            await store.append("big", [huge, created()], NO_STREAM)
        assert caught.value.index == 0
        assert await count_all(store) == 0

    async def test_unregistered_event_type_is_rejected(self, store: Store) -> None:
        from google.protobuf.timestamp_pb2 import Timestamp

        with pytest.raises(UnknownEventTypeError, match="Timestamp"):
            await store.append("unreg", [created(), NewEvent(Timestamp())], NO_STREAM)
        assert await count_all(store) == 0

    async def test_empty_and_malformed_appends(self, store: Store) -> None:
        with pytest.raises(ValidationError):
            await store.append("x", [], ANY)
        same = created()
        with pytest.raises(ValidationError, match="unique"):
            await store.append("x", [same, same], ANY)
        with pytest.raises(ValidationError, match="expected_version"):
            await store.append("x", [created()], -1)
        assert await count_all(store) == 0

    async def test_a_time_far_in_the_future_sees_everything(self, store: Store) -> None:
        from datetime import UTC, datetime

        result = await store.append("future", [created("t"), decision(1)], NO_STREAM)
        for year in (2100, 2262, 2999):
            at = datetime(year, 1, 1, tzinfo=UTC)
            assert await store.seq_at_time(at) == result.stream_seqs[-1], year
            assert len(await store.read_aggregate("future", until_time=at)) == 2, year

    async def test_a_time_long_before_the_epoch_sees_nothing(self, store: Store) -> None:
        # nats-server reads a start time as int64 nanoseconds: a time before 1678 wrapped
        # (years 1000..1677 read as 2169..2261: every message was "stored by then") or
        # was refused (years 1..~900: JetStream 408 Malformed Request, raised as it was).
        from datetime import UTC, datetime

        await store.append("ancient", [created("t"), decision(1)], NO_STREAM)
        for year in (1, 500, 1000, 1500, 1677, 1678, 1969):
            at = datetime(year, 1, 1, tzinfo=UTC)
            assert await store.seq_at_time(at) == 0, year
            assert await store.version_at_time("ancient", at) == 0, year
            assert await store.read_aggregate("ancient", until_time=at) == [], year
        for ns in (-(2**70), -(2**63), -1, 0):
            assert await store.seq_at_time(ns) == 0, ns
            assert await store.version_at_time("ancient", ns) == 0, ns
