"""Snapshot store: the latest few snapshots of each aggregate, on JetStream.

Stream ``CONTEXT_SNAPSHOTS``, one subject per aggregate
(``context.snapshots.<aggregate_id>``) with ``max_msgs_per_subject = keep``, so each
aggregate keeps a bounded history. Saving is idempotent: the message id is
``<aggregate>:<version>:s<schema>`` (deduplicated within the window) and a snapshot
whose version and schema are already the newest on its subject, taken at the same
event (stream sequence and recorded time), is not written again.

The payload is the ``Snapshot`` protobuf with an opaque, already encoded state: this
module never looks inside it. :func:`choose` picks the snapshot a reader may use for a
point in history; a snapshot of another state schema is never chosen.

Two adapters with one contract (``tests/contract/test_snapshot_store.py``): JetStream
and an in-memory fake for unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS

from jetsource._gen.eventstore.v1.snapshot_pb2 import Snapshot as SnapshotPb
from jetsource.core.clock import from_timestamp, to_timestamp
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError
from jetsource.core.ids import validate_aggregate_id
from jetsource.core.settings import SnapshotSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.horizon import BeyondHorizonError
from jetsource.eventstore.jsapi import OutMessage, RawMessage
from jetsource.eventstore.port import EventStore

SCHEMA_HEADER = "Jetsource-State-Schema"
# The state schema a stored message that is no readable snapshot is listed under
# (schemas start at 1): never chosen.
UNREADABLE_SCHEMA = -1
VERSION_HEADER = "Jetsource-Snapshot-Version"


class SnapshotTooLargeError(ValueError):
    """The encoded snapshot is above the configured maximum message size."""


@dataclass(frozen=True)
class Snapshot:
    aggregate_type: str
    aggregate_id: str
    version: int
    last_seq: int
    recorded_at_ns: int
    schema_version: int
    encoding: str
    state: bytes
    idempotency_keys: bytes = b""
    taken_at_ns: int = 0
    snapshot_seq: int = 0  # where it is stored in the snapshot stream (0: not stored)

    def usable(self, schema: int, max_version: int | None, max_seq: int | None) -> bool:
        """Usable for a point in history at ``max_version`` / stream sequence ``max_seq``."""
        return (
            self.schema_version == schema
            and (max_version is None or self.version <= max_version)
            and (max_seq is None or self.last_seq <= max_seq)
        )

    def encode(self) -> bytes:
        pb = SnapshotPb(
            aggregate_type=self.aggregate_type,
            aggregate_id=self.aggregate_id,
            version=self.version,
            last_stream_sequence=self.last_seq,
            state_schema_version=self.schema_version,
            encoding=self.encoding,
            state=self.state,
            idempotency_keys=self.idempotency_keys,
        )
        pb.recorded_at.CopyFrom(to_timestamp(self.recorded_at_ns))
        pb.taken_at.CopyFrom(to_timestamp(self.taken_at_ns or time.time_ns()))
        return pb.SerializeToString()

    @classmethod
    def decode(cls, data: bytes, snapshot_seq: int = 0) -> Snapshot:
        pb = SnapshotPb()
        pb.ParseFromString(data)
        return cls(
            pb.aggregate_type,
            pb.aggregate_id,
            pb.version,
            pb.last_stream_sequence,
            from_timestamp(pb.recorded_at),
            pb.state_schema_version,
            pb.encoding,
            pb.state,
            pb.idempotency_keys,
            from_timestamp(pb.taken_at),
            snapshot_seq,
        )


def _same(latest: Snapshot | None, snapshot: Snapshot) -> bool:
    """Is ``latest`` (the newest stored) already ``snapshot``: same version and schema,
    taken at the same event? One that names another stream sequence or recorded time
    for the version (written by something else: readers skip it) is written past."""
    return (
        latest is not None
        and latest.version == snapshot.version
        and latest.schema_version == snapshot.schema_version
        and latest.last_seq == snapshot.last_seq
        and latest.recorded_at_ns == snapshot.recorded_at_ns
    )


def not_taken_at(snapshot: Snapshot, found: RecordedEvent | None) -> str | None:
    """Why ``found`` (the event the stream holds where ``snapshot`` says it was taken;
    None: none) is not the event ``snapshot`` was taken at (None: it is): its version,
    stream sequence and recorded time must be the snapshot's. Readers skip a snapshot
    that is not (jetsource.projection.history); the archiver compacts behind none."""
    if found is None or found.version != snapshot.version or found.stream_seq != snapshot.last_seq:
        return (
            f"the event stream holds no v{snapshot.version} of it at stream "
            f"sequence {snapshot.last_seq}"
        )
    if found.recorded_at_ns != snapshot.recorded_at_ns:
        return (
            f"its recorded time {snapshot.recorded_at_ns} is not its event's "
            f"({found.recorded_at_ns})"
        )
    return None


async def not_its_history(store: EventStore, snapshot: Snapshot) -> str | None:
    """Why ``snapshot`` is no snapshot of its aggregate's history in ``store`` (None:
    it is, or its event is purged behind a compaction horizon, where the snapshot is
    what is left): one read of the one event at its version and stream sequence,
    checked by :func:`not_taken_at`. The one check of readers and of the archiver."""
    try:
        read = await store.read_aggregate(
            snapshot.aggregate_id,
            from_version=snapshot.version,
            to_version=snapshot.version,
            from_seq=snapshot.last_seq,
            to_seq=snapshot.last_seq,
        )
    except BeyondHorizonError:
        return None
    except CorruptEventError as exc:
        return f"the event at its stream sequence does not read: {exc}"
    return not_taken_at(snapshot, read[0] if len(read) == 1 else None)


def choose(
    snapshots: Iterable[Snapshot], schema: int, max_version: int | None, max_seq: int | None
) -> Snapshot | None:
    """The usable snapshot with the highest version, if any."""
    best: Snapshot | None = None
    for s in snapshots:
        if s.usable(schema, max_version, max_seq) and (best is None or s.version > best.version):
            best = s
    return best


class SnapshotStore(Protocol):
    async def save(self, snapshot: Snapshot) -> bool:
        """Store it; False when this version and schema is already stored."""

    async def latest(self, aggregate_id: str) -> Snapshot | None:
        """The newest snapshot on the aggregate's subject, of any schema."""

    async def history(self, aggregate_id: str) -> list[Snapshot]:
        """Every snapshot still kept for the aggregate, oldest first."""

    async def find(
        self, aggregate_id: str, schema: int, max_version: int | None, max_seq: int | None
    ) -> Snapshot | None:
        """The best usable snapshot for a point in history (see :func:`choose`)."""

    async def delete_after(self, aggregate_id: str, version: int) -> int:
        """Remove the aggregate's snapshots above ``version``; returns how many."""

    async def delete_schema(self, schema: int) -> int:
        """Remove every snapshot of one state schema; returns how many."""

    def all(self) -> Any:
        """Every stored snapshot, in storage order (an async iterator)."""


def stream_config(cfg: SnapshotSettings, duplicate_window_s: float = 120.0) -> dict[str, Any]:
    """Derived data: bounded per aggregate, deletable (rewind, drop), never refuses a save."""
    return {
        "name": cfg.stream,
        "subjects": [f"{cfg.subject_prefix}.>"],
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "max_msgs_per_subject": cfg.keep,
        "compression": "s2",
        "allow_direct": True,
        "duplicate_window": int(duplicate_window_s * 1_000_000_000),
        "num_replicas": cfg.replicas,
        "max_msg_size": cfg.max_msg_size,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
    }


class JetStreamSnapshotStore:
    def __init__(self, nc: NATS, settings: SnapshotSettings, request_timeout_s: float) -> None:
        self._cfg = settings
        self._replies = jsapi.Replies(nc)
        self._timeout = request_timeout_s

    @property
    def settings(self) -> SnapshotSettings:
        return self._cfg

    async def start(self) -> None:
        await self._replies.start()

    async def close(self) -> None:
        await self._replies.stop()

    async def ensure_stream(self) -> dict[str, Any]:
        await self.start()
        return await jsapi.ensure_stream(self._replies, stream_config(self._cfg), self._timeout)

    def subject(self, aggregate_id: str) -> str:
        validate_aggregate_id(aggregate_id)
        return f"{self._cfg.subject_prefix}.{aggregate_id}"

    def _decode(self, raw: RawMessage) -> Snapshot:
        """The snapshot in a stored message. One this store did not write (bytes that
        are no snapshot, or one naming another aggregate than its subject: a raw
        publish) is listed as :data:`UNREADABLE_SCHEMA`, so no reader ever chooses it
        and it is deleted like any other, instead of failing every load of the
        aggregate."""
        aggregate_id = raw.subject[len(self._cfg.subject_prefix) + 1 :]
        try:
            snapshot = Snapshot.decode(raw.data, raw.seq)
        except (DecodeError, ValueError, OverflowError):
            return Snapshot(
                aggregate_type="",
                aggregate_id=aggregate_id,
                version=0,
                last_seq=0,
                recorded_at_ns=0,
                schema_version=UNREADABLE_SCHEMA,
                encoding="",
                state=b"",
                snapshot_seq=raw.seq,
            )
        if snapshot.aggregate_id != aggregate_id or snapshot.last_seq < snapshot.version:
            return replace(snapshot, schema_version=UNREADABLE_SCHEMA)
        return snapshot

    async def save(self, snapshot: Snapshot) -> bool:
        data = snapshot.encode()
        if len(data) > self._cfg.max_msg_size:
            raise SnapshotTooLargeError(
                f"snapshot of {snapshot.aggregate_id} v{snapshot.version} is {len(data)} bytes; "
                f"the limit is {self._cfg.max_msg_size}"
            )
        if _same(await self.latest(snapshot.aggregate_id), snapshot):
            return False
        headers = {
            # With the event's sequence: a snapshot written past a stored one of the same
            # version taken at another event (``_same``) is no duplicate of it.
            "Nats-Msg-Id": (
                f"{snapshot.aggregate_id}:{snapshot.version}:s{snapshot.schema_version}"
                f":{snapshot.last_seq}"
            ),
            SCHEMA_HEADER: str(snapshot.schema_version),
            VERSION_HEADER: str(snapshot.version),
        }
        ack = await jsapi.publish_stored(
            self._replies,
            self._cfg.stream,
            OutMessage(self.subject(snapshot.aggregate_id), data, headers),
            self._timeout,
        )
        return not ack.duplicate

    async def latest(self, aggregate_id: str) -> Snapshot | None:
        raw = await jsapi.last_for_subject(
            self._replies, self._cfg.stream, self.subject(aggregate_id), self._timeout
        )
        return None if raw is None else self._decode(raw)

    async def history(self, aggregate_id: str) -> list[Snapshot]:
        return [
            self._decode(raw)
            async for raw in jsapi.direct_get_batch(
                self._replies, self._cfg.stream, self.subject(aggregate_id), 1, self._timeout
            )
        ]

    async def find(
        self, aggregate_id: str, schema: int, max_version: int | None, max_seq: int | None
    ) -> Snapshot | None:
        # Usually the newest one will do (one direct get); else look at all kept ones.
        latest = await self.latest(aggregate_id)
        if latest is None:
            return None
        if latest.usable(schema, max_version, max_seq):
            return latest
        return choose(await self.history(aggregate_id), schema, max_version, max_seq)

    async def _delete(self, snapshots: Sequence[Snapshot]) -> int:
        removed = 0
        for s in snapshots:
            removed += await jsapi.delete_message(
                self._replies, self._cfg.stream, s.snapshot_seq, self._timeout
            )
        return removed

    async def delete_after(self, aggregate_id: str, version: int) -> int:
        return await self._delete(
            [s for s in await self.history(aggregate_id) if s.version > version]
        )

    async def all(self) -> Any:
        async for raw in jsapi.direct_get_batch(
            self._replies, self._cfg.stream, f"{self._cfg.subject_prefix}.>", 1, self._timeout
        ):
            yield self._decode(raw)

    async def delete_schema(self, schema: int) -> int:
        return await self._delete([s async for s in self.all() if s.schema_version == schema])


class InMemorySnapshotStore:
    """The fake: same contract, a dict of lists."""

    def __init__(self, keep: int = 5) -> None:
        self.keep = keep
        self._by_id: dict[str, list[Snapshot]] = {}
        self._seq = 0

    async def save(self, snapshot: Snapshot) -> bool:
        validate_aggregate_id(snapshot.aggregate_id)
        kept = self._by_id.setdefault(snapshot.aggregate_id, [])
        if _same(kept[-1] if kept else None, snapshot):
            return False
        self._seq += 1
        kept.append(_with_seq(snapshot, self._seq))
        del kept[: -self.keep]
        return True

    async def latest(self, aggregate_id: str) -> Snapshot | None:
        validate_aggregate_id(aggregate_id)
        kept = self._by_id.get(aggregate_id)
        return kept[-1] if kept else None

    async def history(self, aggregate_id: str) -> list[Snapshot]:
        validate_aggregate_id(aggregate_id)
        return list(self._by_id.get(aggregate_id, []))

    async def find(
        self, aggregate_id: str, schema: int, max_version: int | None, max_seq: int | None
    ) -> Snapshot | None:
        return choose(await self.history(aggregate_id), schema, max_version, max_seq)

    async def delete_after(self, aggregate_id: str, version: int) -> int:
        kept = self._by_id.get(aggregate_id, [])
        self._by_id[aggregate_id] = [s for s in kept if s.version <= version]
        return len(kept) - len(self._by_id[aggregate_id])

    async def delete_schema(self, schema: int) -> int:
        removed = 0
        for key, kept in self._by_id.items():
            self._by_id[key] = [s for s in kept if s.schema_version != schema]
            removed += len(kept) - len(self._by_id[key])
        return removed

    async def all(self) -> Any:
        for s in sorted((s for k in self._by_id.values() for s in k), key=lambda s: s.snapshot_seq):
            yield s


def _with_seq(snapshot: Snapshot, seq: int) -> Snapshot:
    from dataclasses import replace

    return replace(snapshot, snapshot_seq=seq)
