"""The archive of one event stream: sealed segments and the manifest that lists them.

Layout in the object store::

    segments/<stream>/<first seq>-<last seq>-<sha256[:16]>.seg   the sealed segment
    manifest/<stream>/<same name>.json                           its manifest entry

A manifest entry is written only after its segment was stored, read back and
verified, so every entry names a whole, checked segment; the manifest is the set of
entries (two archivers never write the same key: a name carries the content's hash,
and keys are written create-only). A segment without an entry (an archiver killed
between the two writes) is an orphan: ``verify`` reports it, nothing reads it, and
nothing was purged on its account.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

from jetsource.archive import segment
from jetsource.archive.objectstore import ObjectStore
from jetsource.archive.segment import ArchivedMessage, SegmentError
from jetsource.core.clock import format_rfc3339_ns, now_ns
from jetsource.eventstore.horizon import Horizon

# Decoded segments kept per process (a segment of 10,000 events is a few MB decoded);
# readers keep the events of each aggregate they read besides.
SEGMENT_CACHE = 8


@dataclass(frozen=True)
class AggregateRange:
    first_version: int
    last_version: int
    first_seq: int
    last_seq: int
    first_time_ns: int
    last_time_ns: int


@dataclass(frozen=True)
class SegmentEntry:
    name: str  # key of the segment
    stream: str
    count: int
    first_seq: int
    last_seq: int
    size: int
    sha256: str
    created: str
    # aggregate id -> the versions (and sequences, times) of its events in the segment
    aggregates: dict[str, AggregateRange] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes, key: str = "manifest entry") -> SegmentEntry:
        """The entry stored at ``key``; SegmentError naming ``key`` when it is not one
        (not JSON, not an object, a field missing or of the wrong type)."""
        try:
            body = json.loads(data)
            if not isinstance(body, dict):
                raise ValueError(f"a JSON {type(body).__name__}, not an object")
            body["aggregates"] = {k: AggregateRange(**v) for k, v in body["aggregates"].items()}
            entry = cls(**body)
            for name, kind in (("name", str), ("count", int), ("first_seq", int)):
                if not isinstance(getattr(entry, name), kind):
                    raise ValueError(f"{name} is {getattr(entry, name)!r}")
            if not isinstance(entry.last_seq, int) or not isinstance(entry.sha256, str):
                raise ValueError("last_seq or sha256 of the wrong type")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SegmentError(f"{key}: not a manifest entry ({exc})") from exc
        return entry


@dataclass
class VerifyReport:
    ok: list[str] = field(default_factory=list)
    # segment (or manifest entry that does not read) -> what is wrong
    corrupt: dict[str, str] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)  # segments without an entry

    @property
    def passed(self) -> bool:
        return not self.corrupt


_IN_A_STREAM_FOLDER = re.compile(r"segments/[^/]+/")


class Archive:
    def __init__(self, objects: ObjectStore, stream: str) -> None:
        self.objects = objects
        self.stream = stream
        self._entries: dict[str, SegmentEntry] = {}  # manifest key -> entry (immutable)
        self._segments: dict[str, list[ArchivedMessage]] = {}  # small cache of decoded
        # segment name -> its fetch and decode under way (one per segment, every
        # reader of it awaiting that one; see read())
        self._loading: dict[str, asyncio.Task[list[ArchivedMessage]]] = {}
        # manifest key -> why it is not an entry (the last listing's; see entries())
        self.unreadable: dict[str, str] = {}

    @property
    def _seg_prefix(self) -> str:
        return f"segments/{self.stream}/"

    @property
    def _man_prefix(self) -> str:
        return f"manifest/{self.stream}/"

    def _entry_key(self, name: str) -> str:
        return self._man_prefix + name.rsplit("/", 1)[-1].removesuffix(".seg") + ".json"

    def _segment_key(self, entry_key: str) -> str:
        return self._seg_prefix + entry_key.rsplit("/", 1)[-1].removesuffix(".json") + ".seg"

    async def write(
        self,
        messages: Sequence[ArchivedMessage],
        aggregates: dict[str, AggregateRange],
    ) -> SegmentEntry:
        """Seal ``messages`` into a segment, store it, read it back and verify it,
        then write its manifest entry. Returns the entry (only once all is checked)."""
        # Sealed and hashed in steps that yield to the event loop (a full segment held
        # it some 230 ms: lease renewals, heartbeats and reads of the process waiting).
        blob = await segment.encode_yielding(self.stream, messages)
        digest = await segment.checksum_yielding(blob)
        name = f"{self._seg_prefix}{messages[0].seq:020d}-{messages[-1].seq:020d}-{digest[:16]}.seg"
        await self.objects.put(name, blob, create_only=True)  # same name: same bytes
        entry = SegmentEntry(
            name,
            self.stream,
            len(messages),
            messages[0].seq,
            messages[-1].seq,
            len(blob),
            digest,
            format_rfc3339_ns(now_ns()),
            aggregates,
        )
        back = await self.read(entry, cache=False)
        if [(m.seq, m.data, m.subject) for m in back] != [
            (m.seq, m.data, m.subject) for m in messages
        ]:
            raise SegmentError(f"{name}: read back, it is not what was written")
        await self.objects.put(self._entry_key(name), entry.encode(), create_only=True)
        self._entries[self._entry_key(name)] = entry
        return entry

    async def entries(self, strict: bool = True) -> list[SegmentEntry]:
        """The manifest: every entry, in stream order. An entry that does not read
        raises SegmentError naming it; with ``strict=False`` it is left out and named
        in :attr:`unreadable` (verify and list report it beside the rest)."""
        self.unreadable = {}
        for key in await self.objects.list(self._man_prefix):
            if key not in self._entries:
                data = await self.objects.get(key)
                if data is None:
                    continue
                try:
                    self._entries[key] = self._own(SegmentEntry.decode(data, key), key)
                except SegmentError as exc:
                    if strict:
                        raise
                    self.unreadable[key] = str(exc)
        return sorted(self._entries.values(), key=lambda e: (e.first_seq, e.name))

    async def entry(self, name: str) -> SegmentEntry | None:
        key = self._entry_key(name)
        if key not in self._entries:
            data = await self.objects.get(key)
            if data is None:
                return None
            self._entries[key] = self._own(SegmentEntry.decode(data, key), key)
        return self._entries[key]

    def _own(self, entry: SegmentEntry, key: str) -> SegmentEntry:
        """``entry`` when it is one of this stream's; a SegmentError naming ``key``
        when it is another stream's (copied into this stream's folder): its messages
        would be read as this stream's (verify passed it, and a restore wrote another
        stream's messages under their own subjects, into that other stream)."""
        if entry.stream != self.stream or not entry.name.startswith(self._seg_prefix):
            raise SegmentError(
                f"{key}: an entry of stream {entry.stream!r} (segment {entry.name}), not of "
                f"{self.stream!r}: copied from another stream's archive?"
            )
        return entry

    async def _check(self, entry: SegmentEntry, blob: bytes | None) -> list[ArchivedMessage]:
        """The segment's messages, checked against ``entry``: checksummed and decoded
        in steps that yield to the event loop (a full segment held it 140 ms)."""
        if blob is None:
            raise SegmentError(f"{entry.name}: missing from {self.objects.location}")
        if len(blob) != entry.size or await segment.checksum_yielding(blob) != entry.sha256:
            raise SegmentError(f"{entry.name}: checksum differs from the manifest's")
        header, messages = await segment.decode_yielding(blob)
        if header.get("stream") != self.stream:
            raise SegmentError(
                f"{entry.name}: a segment of stream {header.get('stream')!r}, not of "
                f"{self.stream!r}"
            )
        if (header["count"], header["first_seq"], header["last_seq"]) != (
            entry.count,
            entry.first_seq,
            entry.last_seq,
        ):
            raise SegmentError(f"{entry.name}: header differs from the manifest entry")
        return messages

    async def read(self, entry: SegmentEntry, cache: bool = True) -> list[ArchivedMessage]:
        """The segment's messages, checked against its entry.

        Cached: readers of a segment not in the cache at once (time travel before the
        horizon for several stories of one segment) share one fetch and decode, each
        fetched and decoded it. It runs in a task of its own: a reader cancelled does
        not cancel it for the others; its error reaches every one of them and is not
        kept (the next read fetches again). ``cache=False`` (the archiver's read-back,
        a pass over the whole archive) always fetches."""
        if not cache:
            return await self._check(entry, await self.objects.get(entry.name))
        if entry.name in self._segments:
            return self._segments[entry.name]
        loading = self._loading.get(entry.name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(entry))
            self._loading[entry.name] = loading
            loading.add_done_callback(partial(self._loaded, entry.name))
        return await asyncio.shield(loading)

    async def _load(self, entry: SegmentEntry) -> list[ArchivedMessage]:
        messages = await self._check(entry, await self.objects.get(entry.name))
        self._segments[entry.name] = messages
        while len(self._segments) > SEGMENT_CACHE:
            self._segments.pop(next(iter(self._segments)))
        return messages

    def _loaded(self, name: str, loading: asyncio.Task[list[ArchivedMessage]]) -> None:
        if self._loading.get(name) is loading:
            del self._loading[name]
        if not loading.cancelled():
            # Taken here too: with every reader of it cancelled, nobody else does (an
            # asyncio "exception was never retrieved" on the log).
            loading.exception()

    def unlisted(
        self, entries: Sequence[SegmentEntry], horizons: Mapping[str, Horizon]
    ) -> dict[str, str]:
        """Segments the stream's horizons name (their events were purged from the live
        stream) that no manifest entry of ``entries`` names -> what is wrong: the
        archive does not hold that history (another folder or bucket than the one
        compaction wrote to, or a segment and its entry removed)."""
        listed = {e.name for e in entries} | {self._segment_key(k) for k in self.unreadable}
        named_by: dict[str, list[str]] = {}
        for aggregate_id, h in sorted(horizons.items()):
            for name in h.segments:
                if name not in listed:
                    named_by.setdefault(name, []).append(aggregate_id)
        out = {}
        for name, ids in sorted(named_by.items()):
            some = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            out[name] = (
                f"{name}: named by the horizon of {len(ids)} aggregates ({some}), whose "
                f"events before it were purged, but in no manifest entry at "
                f"{self.objects.location}: that history is not in this archive "
                "(check JETSOURCE_ARCHIVE__URL)"
            )
        return out

    async def verify(self, horizons: Mapping[str, Horizon] | None = None) -> VerifyReport:
        """Every entry's segment read and checked; segments without an entry listed.
        A manifest entry that does not read is reported under ``corrupt`` (by its key)
        and the others are checked all the same; its segment, named by the entry's key,
        is not counted an orphan. A segment the stream's ``horizons`` name that no
        entry names is reported under ``corrupt`` too (an archive elsewhere, or a
        segment removed with its entry: verify said "0 segments verified", exit 0)."""
        report = VerifyReport()
        entries = await self.entries(strict=False)
        report.corrupt.update(self.unreadable)
        report.corrupt.update(self.unlisted(entries, horizons or {}))
        named = {e.name for e in entries}
        named |= {self._segment_key(key) for key in self.unreadable}
        for entry in entries:
            try:
                await self._check(entry, await self.objects.get(entry.name))
            except SegmentError as exc:
                report.corrupt[entry.name] = str(exc)
            else:
                report.ok.append(entry.name)
        report.orphans = [k for k in await self.objects.list(self._seg_prefix) if k not in named]
        # A segment file outside every stream's folder (copied in by hand, or a folder
        # flattened) belongs to no manifest either: named too, not passed over.
        report.orphans += [
            k
            for k in await self.objects.list("")
            if k.endswith(".seg") and not _IN_A_STREAM_FOLDER.match(k)
        ]
        return report

    async def messages(self, upto_seq: int | None = None) -> list[ArchivedMessage]:
        """Every archived message once, in stream order (segments may overlap when two
        archivers sealed the same events: the same bytes, kept once)."""
        out: dict[int, ArchivedMessage] = {}
        for entry in await self.entries():
            if upto_seq is not None and entry.first_seq > upto_seq:
                continue
            for m in await self.read(entry, cache=False):
                if upto_seq is None or m.seq <= upto_seq:
                    out.setdefault(m.seq, m)
        return [out[s] for s in sorted(out)]
