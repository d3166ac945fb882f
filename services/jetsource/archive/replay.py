"""A read model built from scratch on a compacted stream: archive + live stream.

The live stream no longer holds what was compacted, so a build that starts at the
stream's beginning would meet histories starting at their horizons. Before the
model's worker takes over, this applies to the model, in stream order, every
archived event it has not seen merged with the live events between them, up to the
archive's last sequence; the worker then goes on from the live stream (what the
model has already applied it skips: read models are idempotent by sequence).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from jetsource.archive.archiver import open_record, to_raw
from jetsource.archive.store import Archive
from jetsource.core.codec import PayloadDecodeError, UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError, JetsourceError
from jetsource.eventstore.jetstream import JetStreamEventStore, voided_event
from jetsource.eventstore.jsapi import RawMessage

# Files an archived message in the model's dead letters: (message, story, reason),
# unless a letter of its sequence is there already.
Letter = Callable[[RawMessage, str, str], Awaitable[None]]
# True once the model's version may no longer be written (a drop or reset marked it,
# or a drop of it ended): asked before each batch and letter.
Fenced = Callable[[], Awaitable[bool]]

BATCH = 500


class ReplayError(JetsourceError):
    pass


class ReplayFenced(ReplayError):
    """The model's version was dropped or reset (by another run) while the archive was
    applied: stopped before the next write; what was applied before stays (the drop
    or reset deletes it)."""


def _newer_release_reason(event: UnknownEvent, model: Any) -> str:
    return (
        f"{event.newer_release} (archived: compacted out of the live stream); upgrade the "
        "projector to a release that knows it, then build the model again "
        f"(`jetsource projector rebuild {model.spec.name} --to-version "
        f"{model.spec.version + 1}`; its story's later events wait behind it)"
    )


async def replay_archive(
    store: JetStreamEventStore,
    archive: Archive,
    model: Any,
    letter: Letter | None = None,
    discarded: Collection[int] = (),
    fenced: Fenced | None = None,
) -> int:
    """Apply the archived part of the stream (merged with the live events among it)
    to ``model`` (a projection ReadModel: the archive sits below the projection
    runtime, so it is not named here); returns how many events were applied.

    An event a newer release wrote is not applied (it was skipped in silence before,
    the model past it): as the live path does, an archived one is filed with
    ``letter`` (which files it once: not again when filed already) and its story
    parks behind it (its later archived events are not applied nor filed: the
    rebuild after the upgrade applies them; its live ones are the worker's, parked
    there); without ``letter`` a ReplayError names it. One in ``discarded`` (the
    model's discarded dead letters) or voided is a no-op at its place.

    ``fenced`` is asked before each batch and each letter (as a worker asks its
    DropFence before each batch): once it answers True nothing more is written and
    :class:`ReplayFenced` says so. Unfenced, a drop of the version during this phase
    had it written on into the namespace the drop emptied (keys left, the version
    gone from the control entry)."""
    entries = await archive.entries()
    if not entries:
        return 0
    upto = max(e.last_seq for e in entries)
    start = (await model.checkpoint()).seq + 1
    if start > upto:
        return 0
    prefix = store.settings.subject_prefix + "."
    merged: dict[int, RecordedEvent] = {}
    archived: dict[int, RawMessage] = {}
    for m in await archive.messages(upto):
        if m.seq >= start and m.subject.startswith(prefix):
            archived[m.seq] = to_raw(m)
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
        archived.pop(record.stream_seq, None)  # still in the live stream: delivered
    types = model.spec.consumed_events
    records = [merged[s] for s in sorted(merged)]
    if types is not None:
        records = [r for r in records if r.event_type in types]
    stop = _Stop(model, fenced)
    records = await _park_newer_releases(store, records, archived, model, letter, discarded, stop)
    applied = 0
    for i in range(0, len(records), BATCH):
        await stop.check(applied)
        outcome = await model.apply(records[i : i + BATCH])
        if outcome.failed or outcome.waiting:
            seq, why = next(iter({**outcome.failed, **outcome.waiting}.items()))
            raise ReplayError(
                f"{model.spec.name} v{model.spec.version}: archived sequence {seq} was not "
                f"applied: {why}"
            )
        applied += outcome.applied
    return applied


class _Stop:
    """``fenced`` asked before a write: ReplayFenced once it answers True."""

    def __init__(self, model: Any, fenced: Fenced | None) -> None:
        self.model = model
        self.fenced = fenced

    async def check(self, applied: int) -> None:
        if self.fenced is None or not await self.fenced():
            return
        spec = self.model.spec
        raise ReplayFenced(
            f"{spec.name} v{spec.version} was dropped or reset by another run while the "
            f"archive was applied to it: stopped after {applied} archived events, "
            "nothing more written"
        )


async def _park_newer_releases(
    store: JetStreamEventStore,
    records: list[RecordedEvent],
    archived: dict[int, RawMessage],
    model: Any,
    letter: Letter | None,
    discarded: Collection[int],
    stop: _Stop | None = None,
) -> list[RecordedEvent]:
    """``records`` without the events a newer release wrote and what follows them in
    their stories (filed when archived); a discarded or voided one is a no-op at its
    place (as the live worker reads it)."""
    parked: dict[str, int] = {}  # story -> the sequence it parks behind
    out: list[RecordedEvent] = []
    for r in records:
        agg, seq = r.aggregate_id, r.stream_seq
        if agg in parked:
            # Not filed: an archived one is gone from the live stream (dlq retry could
            # not read it), and the rebuild the letter asks for applies it from the
            # archive (one letter per later event filed thousands, again on each
            # replay); its live ones the worker parks behind the letter on delivery.
            continue
        if isinstance(r.event, UnknownEvent) and r.event.newer_release:
            if seq in discarded or await store.voided(agg, seq):
                out.append(voided_event(r))
                continue
            if letter is None:
                raise ReplayError(
                    f"{model.spec.name} v{model.spec.version}: archived sequence {seq} of "
                    f"{agg!r} not applied: {_newer_release_reason(r.event, model)}"
                )
            if seq in archived:
                if stop is not None:
                    await stop.check(0)
                await letter(archived[seq], agg, _newer_release_reason(r.event, model))
            # (one still in the live stream is dead-lettered on its delivery)
            parked[agg] = seq
            continue
        out.append(r)
    return out
