"""Reading across the compaction horizon: an event store (the port) that answers
from the live stream, and from the archive where the live stream starts later.

The live store raises :class:`BeyondHorizonError` exactly when a read needs events
that were purged (a history that starts after what was asked for, or a time before
the aggregate's horizon); this reader then takes versions 1..horizon from the
archive segments the horizon names, checked to be exactly those versions, and the
rest from the live stream. Slower before the horizon (segments are fetched and
decoded, then kept in a small cache), never different: the answer equals a full
fold of the original history.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from jetsource.archive.archiver import to_raw
from jetsource.archive.objectstore import open_object_store
from jetsource.archive.segment import ArchivedMessage
from jetsource.archive.store import Archive
from jetsource.core.clock import to_ns
from jetsource.core.crypto import ErasureWatch, erasures_heard
from jetsource.core.envelope import (
    AppendResult,
    Expected,
    NewEvent,
    RecordedEvent,
    recorded_by,
)
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore.horizon import BeyondHorizonError, Horizon
from jetsource.eventstore.jetstream import JetStreamEventStore


class ArchivedHistory:
    """The live store's port, with reads before the horizon served by the archive."""

    def __init__(self, live: JetStreamEventStore, archive: Archive, cache_size: int = 256) -> None:
        self.live = live
        self.archive = archive
        self.cache_size = cache_size
        # (aggregate, horizon version) -> its archived events: they never change, but
        # their opened personal values do when the subject is erased: dropped then (a
        # query service served an erased name from here for reads before the horizon).
        self._cache: OrderedDict[tuple[str, int], list[RecordedEvent]] = OrderedDict()
        self._erasures = ErasureWatch()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.live, name)

    @property
    def settings(self) -> Any:
        return self.live.settings

    async def archived(self, aggregate_id: str, horizon: Horizon) -> list[RecordedEvent]:
        """Versions 1..horizon.version of the aggregate, from the archive."""
        if self._erasures.moved():
            self._cache.clear()
        heard = erasures_heard()  # what is opened from here on may be kept
        key = (aggregate_id, horizon.version)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        prefix = f"{self.live.settings.subject_prefix}.{aggregate_id}."
        names = set(horizon.segments)
        found: dict[int, ArchivedMessage] = {}
        for name in sorted(names):
            entry = await self.archive.entry(name)  # one manifest entry, no listing
            if entry is None:
                continue  # named by the horizon, not in this archive: checked below
            for m in await self.archive.read(entry):
                if m.subject.startswith(prefix) and m.seq <= horizon.seq:
                    found.setdefault(m.seq, m)
        out: list[RecordedEvent] = []
        expected = 1
        for seq in sorted(found):
            # As the live stream reads it (read_aggregate): a voided message is a no-op
            # at its version, or not read at all when it does not decode or is out of
            # place; one not voided that does not decode is CorruptEventError naming its
            # sequence. A voided message that did not decode ended every read of the
            # story before the horizon with a PayloadDecodeError once compacted.
            chained = await self.live._in_chain(aggregate_id, to_raw(found[seq]), expected)
            if chained is not None:
                out.append(chained)
                expected = chained.version + 1
        if [r.version for r in out] != list(range(1, horizon.version + 1)):
            have = f"{out[0].version}..{out[-1].version}" if out else "none"
            raise CorruptEventError(
                aggregate_id,
                horizon.seq,
                f"the archive holds versions {have} of it, its horizon says 1..{horizon.version} "
                f"(segments {', '.join(sorted(names)) or 'none'})",
            )
        if self.cache_size and heard == erasures_heard():
            self._cache[key] = out
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    async def read_aggregate(
        self,
        aggregate_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until_time: datetime | int | None = None,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[RecordedEvent]:
        try:
            return await self.live.read_aggregate(
                aggregate_id, from_version, to_version, until_time, from_seq, to_seq
            )
        except BeyondHorizonError as exc:
            horizon = exc.horizon
        limit_ns = to_ns(until_time) if until_time is not None else None
        out: list[RecordedEvent] = []
        for r in await self.archived(aggregate_id, horizon):
            if limit_ns is not None and r.recorded_at_ns > limit_ns:
                return out  # (recorded_by: a version before from_version ends it too)
            if r.version < from_version:
                continue
            if (to_version is not None and r.version > to_version) or (
                to_seq is not None and r.stream_seq > to_seq
            ):
                return out
            out.append(r)
        if to_version is not None and to_version <= horizon.version:
            return out
        out.extend(
            await self.live.read_aggregate(
                aggregate_id,
                max(from_version, horizon.version + 1),
                to_version,
                until_time,
                horizon.seq + 1,
                to_seq,
            )
        )
        return out

    async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
        try:
            return await self.live.version_at_time(aggregate_id, time)
        except BeyondHorizonError as exc:
            horizon = exc.horizon
        t = to_ns(time)
        old = await self.archived(aggregate_id, horizon)
        found = recorded_by(old, t)  # (versions 1..horizon, checked)
        if found < horizon.version:
            return found
        # Every archived version recorded by then (a horizon's latest time may be later
        # than any of them: a voided message's, or its own stamp in a restored stream):
        # the prefix goes on in the live stream.
        rest = await self.live.read_aggregate(
            aggregate_id, horizon.version + 1, None, t, horizon.seq + 1
        )
        return horizon.version + len(rest)

    # The rest of the port: the live stream's.
    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: Expected
    ) -> AppendResult:
        return await self.live.append(aggregate_id, events, expected_version)

    def read_all(
        self, from_seq: int = 1, to_seq: int | None = None, subject_filter: str | None = None
    ) -> AsyncIterator[RecordedEvent]:
        return self.live.read_all(from_seq, to_seq, subject_filter)

    async def last_version(self, aggregate_id: str) -> int:
        return await self.live.last_version(aggregate_id)

    async def seq_at_time(self, time: datetime | int) -> int:
        return await self.live.seq_at_time(time)

    async def voided(self, aggregate_id: str, stream_seq: int) -> bool:
        return await self.live.voided(aggregate_id, stream_seq)


def open_archive(settings: JetsourceSettings, stream: str) -> Archive:
    a = settings.archive
    return Archive(open_object_store(settings.archive_url(), a.endpoint, a.region), stream)


def archive_of(live: JetStreamEventStore, settings: JetsourceSettings) -> Archive | None:
    """The archive of a compacted stream (events before its horizons are only there),
    or None for a stream that keeps its events."""
    if live.settings.retention != "age+compaction":
        return None
    return open_archive(settings, live.settings.stream)


def history_store(
    live: JetStreamEventStore, settings: JetsourceSettings, archive: Archive | None = None
) -> JetStreamEventStore | ArchivedHistory:
    """What readers of a domain's history use: the live store itself unless its stream
    is compacted and the archive is to be read (else reads before the horizon answer
    BeyondHorizonError naming it). ``archive``: the stream's, opened once by a caller
    that reads it for other things too (else opened here)."""
    if not settings.archive.read:
        return live
    archive = archive or archive_of(live, settings)
    return live if archive is None else ArchivedHistory(live, archive)
