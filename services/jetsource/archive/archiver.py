"""The archiver: compaction behind snapshots, export, and restore.

Compaction of a stream whose policy is ``age+compaction``, per aggregate:

1. its live events recorded before the horizon (now - max_age), up to the version
   its latest snapshot covers, never its last event (the stream's last subject
   sequence is what appends are checked against), are the candidates;
2. they are sealed into a segment, stored, read back and verified, and the
   segment's manifest entry written;
3. the aggregate's horizon (KV, compare-and-set) names the new version and segment;
4. only then are they purged: ``$JS.API.STREAM.PURGE`` filtered to the aggregate's
   subjects, below the sequence after the last archived one.

So nothing is purged that is not in a verified segment written by the same run.
A run killed anywhere leaves at most an orphan segment or an entry whose events are
still live; the next run writes the same segment again (same bytes, same name) and
goes on. Two archivers at once seal the same events (each purge follows its own
verified segment); readers keep one copy of each sequence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jetsource.archive.segment import ArchivedMessage, stored_headers
from jetsource.archive.store import AggregateRange, Archive, SegmentEntry
from jetsource.core.clock import now_ns
from jetsource.core.codec import PayloadDecodeError
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import JetsourceError
from jetsource.eventstore import horizon as horizons
from jetsource.eventstore import jsapi
from jetsource.eventstore.horizon import Horizon
from jetsource.eventstore.jetstream import JetStreamEventStore, recorded_ns
from jetsource.eventstore.jsapi import RawMessage
from jetsource.eventstore.refusals import writes_to
from jetsource.eventstore.snapshots import SnapshotStore, not_its_history

log = logging.getLogger("jetsource.archive")
# Aggregates looked up or purged side by side (requests in flight).
PARALLEL = 32


class ArchiveError(JetsourceError):
    pass


@dataclass
class CompactReport:
    stream: str
    horizon_ns: int
    scanned: int = 0  # live events older than the horizon
    archived: int = 0
    purged: int = 0
    aggregates: int = 0
    segments: list[str] = field(default_factory=list)
    # aggregate -> why its old events stay live (no snapshot covers them, ...)
    kept: dict[str, str] = field(default_factory=dict)
    would_seal: int = 0  # a dry run's segments (the real run names them in segments)


@dataclass
class _Candidate:
    aggregate_id: str
    messages: list[ArchivedMessage]
    versions: list[int]


def _overlaps(entry: SegmentEntry, r: tuple[int, int]) -> bool:
    return entry.first_seq <= r[1] and r[0] <= entry.last_seq


def to_archived(raw: RawMessage) -> ArchivedMessage:
    return ArchivedMessage(raw.seq, raw.time_ns, raw.subject, stored_headers(raw.headers), raw.data)


def to_raw(m: ArchivedMessage) -> RawMessage:
    return RawMessage(m.subject, m.seq, m.time_ns, dict(m.headers), m.data)


async def open_record(store: JetStreamEventStore, raw: RawMessage) -> RecordedEvent:
    """A stored message as a recorded event, its sealed personal fields opened (or
    read as erased) where the store seals them."""
    opener = getattr(store, "open", None)
    if opener is not None:
        record: RecordedEvent = await opener(raw)
        return record
    return store.decode(raw)


class Archiver:
    def __init__(
        self,
        store: JetStreamEventStore,
        snapshots: SnapshotStore | None,
        archive: Archive,
        schema: int | None = None,
        segment_events: int = 10_000,
    ) -> None:
        self.store = store
        self.snapshots = snapshots
        self.archive = archive
        self.schema = schema  # the state schema a covering snapshot must have (None: any)
        self.segment_events = segment_events
        self._cfg = store.settings
        self._replies = store._replies
        self._bucket_ready = False
        # After export(): the (first, last) sequence ranges already sealed, left out,
        # and the segments that hold them.
        self.skipped: list[tuple[int, int]] = []
        self.skipped_in: list[SegmentEntry] = []

    # -- compaction ----------------------------------------------------------------

    async def _old_messages(self, before_seq: int) -> dict[str, list[RawMessage]]:
        """The stream's live events up to ``before_seq``, by aggregate, in order."""
        out: dict[str, list[RawMessage]] = {}
        prefix = self._cfg.subject_prefix + "."
        seq = 1
        # Unfiltered pages: a filtered batch costs the server time in the length of the
        # stream after it; what is not an event (voids) is skipped here.
        while seq <= before_seq:
            page = await jsapi.direct_get_page(
                self._replies,
                self._cfg.stream,
                None,
                seq,
                min(jsapi.DIRECT_GET_PAGE, before_seq - seq + 1),
                self._cfg.request_timeout_s,
            )
            for raw in page.messages:
                if raw.seq > before_seq:
                    return out
                if raw.subject.startswith(prefix):
                    out.setdefault(raw.subject[len(prefix) :].split(".", 1)[0], []).append(raw)
            if page.pending == 0 or not page.messages:
                return out
            seq = page.messages[-1].seq + 1
        return out

    async def _candidate(
        self, aggregate_id: str, old: list[RawMessage], report: CompactReport
    ) -> _Candidate | None:
        if self.snapshots is None:
            report.kept[aggregate_id] = "no snapshot store"
            return None
        snapshot = await self.snapshots.latest(aggregate_id)
        wrong_schema = self.schema is not None and snapshot is not None
        if wrong_schema and snapshot is not None and snapshot.schema_version != self.schema:
            kept = [
                s
                for s in await self.snapshots.history(aggregate_id)
                if s.schema_version == self.schema
            ]
            snapshot = kept[-1] if kept else None
        if snapshot is None:
            report.kept[aggregate_id] = "no snapshot covers its old events"
            return None
        # Checked as readers check it: a snapshot not taken at an event of its history
        # (another event at its stream sequence, or not its recorded time) is skipped
        # by readers, so it covers nothing: compacted behind, its events were purged
        # for a snapshot no read starts from. One read of one event per aggregate; one
        # whose event is behind the horizon already is taken.
        if (why := await not_its_history(self.store, snapshot)) is not None:
            report.kept[aggregate_id] = (
                f"its snapshot v{snapshot.version} is not of its history ({why}): readers skip it"
            )
            return None
        tail = await jsapi.last_for_subject(
            self._replies,
            self._cfg.stream,
            f"{self._cfg.subject_prefix}.{aggregate_id}.>",
            self._cfg.request_timeout_s,
        )
        messages: list[ArchivedMessage] = []
        versions: list[int] = []
        for raw in old:
            try:
                version = self.store._envelope(raw).aggregate_version
            except PayloadDecodeError as exc:
                report.kept[aggregate_id] = f"sequence {raw.seq} does not decode ({exc})"
                break
            if versions and await self._voided(aggregate_id, raw, version, versions[-1] + 1):
                # Versions as readers count them: a voided message they step over (it
                # does not decode, or is out of place) is sealed but holds no version.
                # Counted, it made the horizon one version past what the archive reads
                # and every read before the horizon failed once compacted.
                read = await self.store._in_chain(aggregate_id, raw, versions[-1] + 1)
                if read is None:
                    if raw.seq > snapshot.last_seq or tail is None or raw.seq >= tail.seq:
                        break
                    messages.append(to_archived(raw))
                    continue
            if (
                version > snapshot.version
                or raw.seq > snapshot.last_seq
                or tail is None
                or raw.seq >= tail.seq  # its last event stays: appends check against it
                or (versions and version != versions[-1] + 1)
            ):
                break
            messages.append(to_archived(raw))
            versions.append(version)
        if not messages:
            report.kept.setdefault(aggregate_id, "its snapshot or last event is older")
            return None
        return _Candidate(aggregate_id, messages, versions)

    async def _voided(
        self, aggregate_id: str, raw: RawMessage, version: int, expected: int
    ) -> bool:
        """Whether an operator voided this old message, asking the server only when it
        is not a valid event at its place (as ``store.voided`` expects to be asked):
        the store's void watch knows every void recorded, so the usual message costs
        no request (asked for every one, compaction made a round trip per old event)."""
        if self.store.known_voided(raw.seq):
            return True
        if version == expected and self._decodes(raw):
            return False
        return await self.store.voided(aggregate_id, raw.seq)

    def _decodes(self, raw: RawMessage) -> bool:
        """Whether the message's payload decodes as readers decode it; its sealed
        personal fields stay sealed (no key fetched: opening never fails on them)."""
        try:
            envelope = self.store._envelope(raw)
            del envelope.sealed[:]
            self.store.decode(raw, envelope)
        except PayloadDecodeError:
            return False
        return True

    async def compact(
        self,
        now: int | None = None,
        after_seal: Callable[[SegmentEntry], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        dry_run: bool = False,
    ) -> CompactReport:
        """Archive and purge what the policy allows; ``after_seal`` is called once a
        segment is verified, before any purge (fault tests stop a run there);
        ``progress(done, total)`` counts the aggregates with events behind the horizon.
        ``dry_run``: the same checks and the same choice of events, nothing written nor
        purged; ``archived``, ``purged`` and ``aggregates`` count what would be, and
        ``segments`` stays empty (names are given as segments are written:
        ``CompactReport.would_seal`` counts them)."""
        if self._cfg.retention != "age+compaction":
            raise ArchiveError(
                f"stream {self._cfg.stream} keeps its events ({self._cfg.retention}): "
                "only a stream whose retention is age+compaction is compacted"
            )
        horizon_ns = (now if now is not None else now_ns()) - int(self._cfg.max_age_s * 1e9)
        report = CompactReport(self._cfg.stream, horizon_ns)
        await self.store.start()
        if (await self.store.stream_info())["config"].get("deny_purge"):
            # Before sealing anything: the purge would be refused after all that work.
            raise ArchiveError(
                f"stream {self._cfg.stream} was created with deny_purge, which JetStream "
                "never lifts: restore it into a new stream (jetsource archive restore NEW "
                "--retention age+compaction --max-age-s ...) and compact that one"
            )
        before_seq = await self.store.seq_at_time(horizon_ns)
        old = await self._old_messages(before_seq)
        report.scanned = sum(len(v) for v in old.values())
        batch: list[_Candidate] = []
        size = 0
        items = list(old.items())
        if progress is not None:
            progress(0, len(items))
        for at in range(0, len(items), PARALLEL):
            # Looked up side by side, taken in order: the same run seals the same segments.
            chunk = items[at : at + PARALLEL]
            found_all = await asyncio.gather(
                *(self._candidate(aggregate_id, raws, report) for aggregate_id, raws in chunk)
            )
            for found in found_all:
                if found is None:
                    continue
                batch.append(found)
                size += len(found.messages)
                if size >= self.segment_events:
                    await self._seal_and_purge(batch, report, after_seal, dry_run)
                    batch, size = [], 0
            if progress is not None and at + PARALLEL < len(items):
                progress(at + PARALLEL, len(items))
        if batch:
            await self._seal_and_purge(batch, report, after_seal, dry_run)
        if progress is not None:
            progress(len(items), len(items))
        return report

    async def _seal_and_purge(
        self,
        batch: Sequence[_Candidate],
        report: CompactReport,
        after_seal: Callable[[SegmentEntry], None] | None,
        dry_run: bool = False,
    ) -> None:
        messages = sorted((m for c in batch for m in c.messages), key=lambda m: m.seq)
        if dry_run:  # the purge takes each aggregate's live events up to the last sealed
            report.would_seal += 1
            report.archived += len(messages)
            report.purged += len(messages)
            report.aggregates += len(batch)
            return
        ranges = {
            c.aggregate_id: AggregateRange(
                c.versions[0],
                c.versions[-1],
                c.messages[0].seq,
                c.messages[-1].seq,
                c.messages[0].time_ns,
                c.messages[-1].time_ns,
            )
            for c in batch
        }
        # The latest time each aggregate's sealed events were recorded: with a stream's
        # stamps stepping back, one may be later than its last's (horizon.latest_ns).
        latest = {c.aggregate_id: max(recorded_ns(to_raw(m)) for m in c.messages) for c in batch}
        entry = await self.archive.write(messages, ranges)
        report.segments.append(entry.name)
        report.archived += len(messages)
        if after_seal is not None:
            after_seal(entry)
        with writes_to(horizons.kv_stream(self._cfg.stream)):
            await self.ensure_bucket()

        async def purge(c: _Candidate) -> int:
            # The horizon first: a reader that meets the gap knows where it went.
            r = ranges[c.aggregate_id]
            with writes_to(horizons.kv_stream(self._cfg.stream)):
                await self._advance_horizon(c.aggregate_id, r, entry.name, latest[c.aggregate_id])
            with writes_to(self._cfg.stream):
                return await jsapi.purge_subject_before(
                    self._replies,
                    self._cfg.stream,
                    f"{self._cfg.subject_prefix}.{c.aggregate_id}.>",
                    r.last_seq + 1,
                    self._cfg.request_timeout_s,
                )

        for at in range(0, len(batch), PARALLEL):
            chunk = batch[at : at + PARALLEL]
            report.purged += sum(await asyncio.gather(*(purge(c) for c in chunk)))
            report.aggregates += len(chunk)
        log.info("sealed %s (%d events), purged behind it", entry.name, len(messages))

    async def ensure_bucket(self) -> None:
        if not self._bucket_ready:
            await jsapi.ensure_stream(
                self._replies,
                horizons.bucket_config(self._cfg.stream, self._cfg.replicas),
                self._cfg.request_timeout_s,
            )
            self._bucket_ready = True

    async def _advance_horizon(
        self, aggregate_id: str, r: AggregateRange, segment: str, latest_ns: int = 0
    ) -> None:
        """Record the aggregate's horizon (compare-and-set on the KV revision) before
        anything of it is purged; never moves a horizon back. ``latest_ns``: the latest
        recorded time of the events sealed (the horizon keeps the latest of all)."""
        timeout = self._cfg.request_timeout_s
        for _ in range(20):
            found = await horizons.read(self._replies, self._cfg.stream, aggregate_id, timeout)
            old, revision = found if found else (None, 0)
            segments = tuple(old.segments) if old else ()
            # (an older horizon's last time is one of its versions' times)
            latest = max(latest_ns, old.recorded_until_ns if old else 0)
            known = old is not None and old.version >= r.last_version
            if known and segment in segments and old is not None and old.latest_ns >= latest:
                return
            segments = segments if segment in segments else (*segments, segment)
            if known and old is not None:
                new = Horizon(old.version, old.seq, old.time_ns, segments, latest)
            else:
                new = Horizon(r.last_version, r.last_seq, r.last_time_ns, segments, latest)
            try:
                await jsapi.publish(
                    self._replies,
                    jsapi.OutMessage(
                        horizons.kv_subject(self._cfg.stream, aggregate_id),
                        new.encode(),
                        {"Nats-Expected-Last-Subject-Sequence": str(revision)},
                    ),
                    timeout,
                )
                return
            except jsapi.JsApiError as exc:
                if exc.err_code != jsapi.ERR_WRONG_LAST_SEQUENCE:
                    raise
        raise ArchiveError(f"horizon of {aggregate_id}: kept changing under this archiver")

    # -- export and restore ------------------------------------------------------------

    async def export(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[SegmentEntry]:
        """Seal every live message of the stream (events and voids) in the range into
        segments, purging nothing: a copy for cold storage or disaster recovery.

        A message a segment already holds (an export of an overlapping range before,
        or compaction) is not sealed again: the manifest is a set of segments each
        sealed once, so an export run again, or over a wider range, seals only what
        is not yet archived (:attr:`skipped` names the ranges left out). A manifest
        entry or segment that does not read refuses the export, naming it."""
        await self.store.start()
        sealed, holders = await self._sealed(from_seq, to_seq)
        self.skipped = []
        skipping = False
        entries: list[SegmentEntry] = []
        chunk: list[ArchivedMessage] = []
        seq = max(from_seq, 1)
        timeout = self._cfg.request_timeout_s
        # Progress by stream sequence over the range (it was silent for minutes on a
        # large stream): up to --to-seq, or the stream's last sequence now.
        last = to_seq
        if progress is not None:
            end = int((await self.store.stream_info())["state"]["last_seq"])
            last = end if to_seq is None else min(to_seq, end)
        span = max((last or seq) - seq + 1, 0)
        if progress is not None:
            progress(0, span)
        while True:
            page = await jsapi.direct_get_page(
                self._replies, self._cfg.stream, None, seq, jsapi.DIRECT_GET_PAGE, timeout
            )
            done = page.pending == 0 or not page.messages
            if progress is not None and page.messages:
                at = min(page.messages[-1].seq, last or page.messages[-1].seq)
                progress(min(at - max(from_seq, 1) + 1, span), span)
            for raw in page.messages:
                if to_seq is not None and raw.seq > to_seq:
                    done = True
                    break
                if raw.seq in sealed:  # ranges: sealed messages with none to seal between
                    if skipping:
                        self.skipped[-1] = (self.skipped[-1][0], raw.seq)
                    else:
                        self.skipped.append((raw.seq, raw.seq))
                    skipping = True
                    continue
                skipping = False
                chunk.append(to_archived(raw))
                if len(chunk) >= self.segment_events:
                    entries.append(await self.archive.write(chunk, await self._ranges(chunk)))
                    chunk = []
            if done:
                break
            seq = page.messages[-1].seq + 1
        if chunk:
            entries.append(await self.archive.write(chunk, await self._ranges(chunk)))
        self.skipped_in = [h for h in holders if any(_overlaps(h, r) for r in self.skipped)]
        return entries

    async def _sealed(
        self, from_seq: int, to_seq: int | None
    ) -> tuple[set[int], list[SegmentEntry]]:
        """The sequences in the range that sealed segments hold (each segment that
        overlaps it read and checked), and those segments."""
        held: set[int] = set()
        holders = []
        for entry in await self.archive.entries():
            if entry.last_seq < from_seq or (to_seq is not None and entry.first_seq > to_seq):
                continue
            holders.append(entry)
            held.update(m.seq for m in await self.archive.read(entry, cache=False))
        return held, holders

    async def _ranges(self, chunk: list[ArchivedMessage]) -> dict[str, AggregateRange]:
        prefix = self._cfg.subject_prefix + "."
        out: dict[str, AggregateRange] = {}
        for m in chunk:
            if not m.subject.startswith(prefix):
                continue
            try:
                version = (await open_record(self.store, to_raw(m))).version
            except PayloadDecodeError:
                continue
            aggregate_id = m.subject[len(prefix) :].split(".", 1)[0]
            r = out.get(aggregate_id)
            if r is None:
                out[aggregate_id] = AggregateRange(
                    version, version, m.seq, m.seq, m.time_ns, m.time_ns
                )
            else:
                out[aggregate_id] = AggregateRange(
                    r.first_version, version, r.first_seq, m.seq, r.first_time_ns, m.time_ns
                )
        return out
