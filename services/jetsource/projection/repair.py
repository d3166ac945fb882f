"""Repair of a poisoned aggregate without deleting anything.

A message that is not a valid event at its place (it does not decode, its envelope
is empty or names another aggregate, its version breaks the chain, or the domain
refuses it) stops every reader of its aggregate: queries and commands answer
DATA_LOSS naming its stream sequence, and each read model files it (and what follows
it) as dead letters. ``void_sequence`` records an operator's void of that sequence in
the stream (the log stays append-only), after which every reader steps over it: the
fold, time travel, the publisher, the projector and the snapshotter. Then it clears
the models' dead letters of that aggregate: the voided one is dropped (or stepped
over, where it held the aggregate's next version), the ones parked behind it are
applied again in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jetsource.core.codec import PayloadDecodeError
from jetsource.core.envelope import RecordedEvent
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import voided_event
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection


@dataclass
class VoidReport:
    seq: int
    aggregate_id: str
    voided_before: bool
    # model "name vN" -> what happened to its dead letters of the aggregate
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "aggregate_id": self.aggregate_id,
            "voided_before": self.voided_before,
            "models": self.models,
        }


async def void_sequence(p: Projection, seq: int, reason: str, actor: str) -> VoidReport:
    aggregate_id, before = await p.store.void(seq, reason, actor)
    report = VoidReport(seq, aggregate_id, before)
    letters = [d for d in await p.dead_letters.list() if d.aggregate_id == aggregate_id]
    record = await _record_at(p, seq)
    for key in sorted({(d.model, d.version) for d in letters}):
        name, version = key
        model = p.model(name, version)
        mine = [d for d in letters if (d.model, d.version) == key]
        entry: dict[str, Any] = {"dropped": [], "stepped_over": [], "retried": [], "failed": {}}
        for letter in mine:
            if letter.original_seq != seq:
                continue
            position = await model.position(aggregate_id)
            if record is not None and record.version == position + 1:
                # A no-op at its place, exactly as a rebuild will read it.
                await model.apply([voided_event(record)])
                entry["stepped_over"].append(letter.dlq_seq)
            else:
                entry["dropped"].append(letter.dlq_seq)
            await p.dead_letters.delete(letter.dlq_seq)
        retried = await admin.dlq_retry(p, name, aggregate_id)
        entry["retried"] = retried.done
        entry["failed"] = retried.failed
        report.models[f"{name} v{version}"] = entry
    return report


async def _record_at(p: Projection, seq: int) -> RecordedEvent | None:
    """The message at ``seq`` as an event, if it decodes at all."""
    raw = await jsapi.direct_get(
        p.store._replies, p.store.settings.stream, {"seq": seq}, p.store.settings.request_timeout_s
    )
    if raw is None:
        return None
    try:
        return await p.store.open(raw)
    except PayloadDecodeError:
        return None
