"""A compacting stream on the real server: settings, a projection and an archive of
its own per test, and histories compacted at a horizon in their middle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.archive.archiver import Archiver, CompactReport
from jetsource.archive.history import ArchivedHistory, open_archive
from jetsource.archive.store import Archive
from jetsource.core.envelope import NewEvent, RecordedEvent
from jetsource.core.settings import ArchiveSettings, JetsourceSettings
from jetsource.domains.context.serialize import STATE_SCHEMA_VERSION
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection
from jetsource.projection.settings import ProjectorSettings
from tests.eventstore_fixtures import isolated_settings
from tests.projector_fixtures import projector_settings

MAX_AGE_S = 3600.0  # the policy's horizon; tests move "now" instead of waiting


def compacting_settings(
    base: JetsourceSettings, unique: str, archive_dir: Path, **options: Any
) -> ProjectorSettings:
    s = projector_settings(base, unique, snapshots={"every": 10, "keep": 50}, **options)
    return s.model_copy(
        update={
            "eventstore": isolated_settings(
                unique, retention="age+compaction", max_age_s=MAX_AGE_S
            ),
            "archive": ArchiveSettings(url=str(archive_dir), segment_events=100),
        }
    )


@dataclass
class Compacted:
    report: CompactReport
    horizon_ns: int  # events recorded at or before it were candidates


def archiver(p: Projection, archive: Archive | None = None, segment_events: int = 100) -> Archiver:
    return Archiver(
        p.store,
        p.snapshots,
        archive or open_archive(p.settings, p.store.settings.stream),
        schema=STATE_SCHEMA_VERSION,
        segment_events=segment_events,
    )


async def compact_at(p: Projection, horizon_ns: int, archive: Archive | None = None) -> Compacted:
    """Compact as if now were ``horizon_ns`` + the policy's max age."""
    report = await archiver(p, archive).compact(now=horizon_ns + int(MAX_AGE_S * 1e9))
    return Compacted(report, horizon_ns)


def reader(p: Projection) -> ArchivedHistory:
    return ArchivedHistory(p.store, open_archive(p.settings, p.store.settings.stream))


def middle_time(records: Sequence[RecordedEvent], fraction: float = 0.6) -> int:
    return records[int(len(records) * fraction)].recorded_at_ns


async def story_with_a_voided_forgery(p: Projection, unique: str, last: int) -> int:
    """Story s1: created, decisions d1..d4, then a hostile message on its subject (an
    envelope whose payload does not parse, at version 6) voided by an operator (readers
    step over it), then decisions e5 up to version ``last``. The voided sequence."""
    store = p.store
    await store.append("s1", [NewEvent(ev.ContextCreated(title="T", created_by="x"))], 0)
    for i in range(1, 5):
        added = ev.DecisionAdded(decision_id=f"d{i}", author="bob", title="D")
        await store.append("s1", [NewEvent(added)], i)
    tail = (await store.read_aggregate("s1"))[-1]
    raw = await jsapi.direct_get(
        store._replies, store.settings.stream, {"seq": tail.stream_seq}, 5.0
    )
    assert raw is not None
    forged = EventEnvelope()
    forged.ParseFromString(raw.data)
    forged.aggregate_version, forged.payload = 6, b"\xff\xff\xff\x07garbage"
    forged.event_id = f"forged-{unique}"
    ack = await p.nc.jetstream().publish(raw.subject, forged.SerializeToString())
    await store.void(ack.seq, "test", "tester")
    for i in range(5, last + 1):
        added = ev.DecisionAdded(decision_id=f"e{i}", author="bob", title="D")
        await store.append("s1", [NewEvent(added)], i)
    return int(ack.seq)
