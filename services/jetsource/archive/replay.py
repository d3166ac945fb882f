"""A read model built from scratch on a compacted stream: archive + live stream.

The live stream no longer holds what was compacted, so a build that starts at the
stream's beginning would meet histories starting at their horizons. Before the
model's worker takes over, this applies to the model, in stream order, every
archived event it has not seen merged with the live events between them, up to the
archive's last sequence; the worker then goes on from the live stream (what the
model has already applied it skips: read models are idempotent by sequence).
"""

from __future__ import annotations

from typing import Any

from jetsource.archive.archiver import open_record, to_raw
from jetsource.archive.store import Archive
from jetsource.core.codec import PayloadDecodeError
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError, JetsourceError
from jetsource.eventstore.jetstream import JetStreamEventStore

BATCH = 500


class ReplayError(JetsourceError):
    pass


async def replay_archive(store: JetStreamEventStore, archive: Archive, model: Any) -> int:
    """Apply the archived part of the stream (merged with the live events among it)
    to ``model`` (a projection ReadModel: the archive sits below the projection
    runtime, so it is not named here); returns how many events were applied."""
    entries = await archive.entries()
    if not entries:
        return 0
    upto = max(e.last_seq for e in entries)
    start = (await model.checkpoint()).seq + 1
    if start > upto:
        return 0
    prefix = store.settings.subject_prefix + "."
    merged: dict[int, RecordedEvent] = {}
    for m in await archive.messages(upto):
        if m.seq >= start and m.subject.startswith(prefix):
            # As the live stream is read (read_all): a message that does not decode is
            # stepped over when an operator voided it, else CorruptEventError naming it
            # (a PayloadDecodeError ended the rebuild before).
            try:
                merged[m.seq] = await open_record(store, to_raw(m))
            except PayloadDecodeError as exc:
                aggregate_id = m.subject.rsplit(".", 2)[-2]
                if not await store.voided(aggregate_id, m.seq):
                    raise CorruptEventError(aggregate_id, m.seq, str(exc)) from exc
    async for record in store.read_all(from_seq=start, to_seq=upto):
        merged[record.stream_seq] = record
    types = model.spec.consumed_events
    records = [merged[s] for s in sorted(merged)]
    if types is not None:
        records = [r for r in records if r.event_type in types]
    applied = 0
    for i in range(0, len(records), BATCH):
        outcome = await model.apply(records[i : i + BATCH])
        if outcome.failed or outcome.waiting:
            seq, why = next(iter({**outcome.failed, **outcome.waiting}.items()))
            raise ReplayError(
                f"{model.spec.name} v{model.spec.version}: archived sequence {seq} was not "
                f"applied: {why}"
            )
        applied += outcome.applied
    return applied
