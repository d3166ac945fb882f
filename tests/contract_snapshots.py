"""The snapshot store contract: the JetStream adapter and the in-memory fake pass it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from jetsource.core.errors import InvalidAggregateIdError
from jetsource.eventstore.snapshots import Snapshot

Store = Any


def snap(aggregate_id: str, version: int, schema: int = 1, state: bytes = b"s") -> Snapshot:
    return Snapshot(
        "context",
        aggregate_id,
        version,
        last_seq=version * 10,
        recorded_at_ns=version * 1_000,
        schema_version=schema,
        encoding="test",
        state=state + str(version).encode(),
        idempotency_keys=b"k",
    )


class SnapshotStoreContract:
    """Subclass with a ``snapshots`` fixture yielding an empty store keeping 3 per id."""

    async def test_save_and_read_back(self, snapshots: Store) -> None:
        assert await snapshots.latest("a") is None
        assert await snapshots.save(snap("a", 100))
        got = await snapshots.latest("a")
        assert got is not None and got.snapshot_seq > 0
        assert replace(got, snapshot_seq=0, taken_at_ns=0) == snap("a", 100)
        assert await snapshots.latest("b") is None

    async def test_saving_again_changes_nothing(self, snapshots: Store) -> None:
        assert await snapshots.save(snap("a", 100))
        assert not await snapshots.save(snap("a", 100))
        assert [s.version for s in await snapshots.history("a")] == [100]
        # Another schema of the same version is another snapshot.
        assert await snapshots.save(snap("a", 100, schema=2))
        assert [s.schema_version for s in await snapshots.history("a")] == [1, 2]

    async def test_history_is_bounded_per_aggregate(self, snapshots: Store) -> None:
        for v in (100, 200, 300, 400, 500):
            await snapshots.save(snap("a", v))
        await snapshots.save(snap("b", 100))
        assert [s.version for s in await snapshots.history("a")] == [300, 400, 500]
        assert [s.version for s in await snapshots.history("b")] == [100]

    async def test_find_picks_the_newest_usable(self, snapshots: Store) -> None:
        for v in (100, 200, 300):
            await snapshots.save(snap("a", v))
        await snapshots.save(snap("a", 400, schema=0))  # an old schema: never chosen

        async def found(max_version: int | None, max_seq: int | None) -> int | None:
            s = await snapshots.find("a", 1, max_version, max_seq)
            return s.version if s else None

        assert await found(None, None) == 300
        assert await found(250, None) == 200
        assert await found(None, 2_999) == 200  # last_seq of v300 is 3000
        assert await found(199, None) is None
        assert await snapshots.find("a", 0, None, None) is not None
        assert await snapshots.find("nobody", 1, None, None) is None

    async def test_delete_after_and_by_schema(self, snapshots: Store) -> None:
        for v in (100, 200, 300):
            await snapshots.save(snap("a", v))
        await snapshots.save(snap("b", 100, schema=2))
        assert await snapshots.delete_after("a", 150) == 2
        assert [s.version for s in await snapshots.history("a")] == [100]
        assert await snapshots.delete_schema(2) == 1
        assert await snapshots.history("b") == []
        assert [s.aggregate_id async for s in snapshots.all()] == ["a"]

    async def test_bad_ids_are_refused(self, snapshots: Store) -> None:
        with pytest.raises(InvalidAggregateIdError):
            await snapshots.latest("a.b")
        with pytest.raises(InvalidAggregateIdError):
            await snapshots.save(snap("bad id", 1))
