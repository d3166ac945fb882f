"""Erasure of one data subject (crypto-shredding), and the read models brought along.

1. The subject's data key is destroyed (``JetStreamKeyStore.erase``: overwritten in
   place in the key stream, then a delete marker every running reader hears). From
   then on every reader of every stream (folds, time travel, the projector, the
   snapshotter, rebuilds, archive segments, which hold the envelopes as stored) reads
   the subject's personal fields as ``<erased>``; nothing else of any event changes.
2. The aggregates holding the subject's sealed fields are found by scanning each
   domain's stream for boxes under the subject's key reference (envelopes only, no
   payload is decoded).
3. Each of them is written again, whole, in every read model through the admin
   replay (one guarded atomic write per aggregate), and its snapshots are deleted
   (a secure delete: the stored bytes are overwritten) and taken again from the
   events as they now read.

Running again is safe and finishes a run that failed half-way: the key stays gone,
the same aggregates are found and written again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.errors import ValidationError
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.snapshots import SnapshotModel

log = logging.getLogger("jetsource.erasure")
Progress = Callable[[int, int], None]
MAX_SUBJECT = 1024
# How long running processes get to drop their folded states after hearing of it.
GRACE_S = 0.5


@dataclass
class ErasureReport:
    subject_ref: str = ""
    key_destroyed: bool = False  # False: there was no key (erased before, or never sealed)
    scanned: int = 0  # events looked at
    aggregates: dict[str, list[str]] = field(default_factory=dict)  # domain -> ids
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "subject_ref": self.subject_ref,
            "key_destroyed": self.key_destroyed,
            "scanned_events": self.scanned,
            "aggregates": self.aggregates,
            "models": self.models,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }


def check_subject(subject: str) -> None:
    if not subject or not subject.strip():
        raise ValidationError("the subject to erase is empty", field="subject")
    if len(subject) > MAX_SUBJECT:
        raise ValidationError(
            f"the subject is longer than {MAX_SUBJECT} characters", field="subject"
        )


async def holders(store: JetStreamEventStore, ref: bytes) -> tuple[list[str], int]:
    """Aggregates of a store's stream with a box under ``ref``, and how many events
    were read (envelopes only: no payload is decoded, no key is needed)."""
    await store.start()
    cfg = store.settings
    found: dict[str, None] = {}
    seen = 0
    async for raw in jsapi.direct_get_batch(
        store._replies, cfg.stream, f"{cfg.subject_prefix}.>", 1, cfg.request_timeout_s
    ):
        seen += 1
        envelope = EventEnvelope()
        try:
            envelope.ParseFromString(raw.data)
        except Exception:
            continue  # not an event (voided or corrupt): nothing of anyone is sealed in it
        if any(box.key_ref == ref for box in envelope.sealed):
            found[raw.subject[len(cfg.subject_prefix) + 1 :].split(".", 1)[0]] = None
    return list(found), seen


async def erase_subject(
    p: Projection, subject: str, progress: Progress = lambda done, total: None
) -> ErasureReport:
    """Destroy the subject's key and bring every read model and snapshot to the
    erased form (see the module doc). Aggregates that fail are reported, left as they
    were, and done by running it again."""
    started = time.perf_counter()
    check_subject(subject)
    report = ErasureReport()
    stores = list(p.stores.values())
    erasure = await stores[0].keys.erase(subject)
    report.key_destroyed = erasure.existed
    ref = await stores[0].keys.ref_of(subject)
    if ref is None:  # no pepper: nothing was ever sealed anywhere
        report.seconds = time.perf_counter() - started
        return report
    report.subject_ref = ref.hex()
    for store in stores[1:]:  # this process's other key stores forget it now too
        store.keys.forget(ref)
    for domain in p.domains:
        found, seen = await holders(p.domain_store(domain.name), ref)
        report.scanned += seen
        if found:
            report.aggregates[domain.name] = found
    if not report.aggregates:
        report.seconds = time.perf_counter() - started
        return report
    # Running processes heard the erasure and dropped the states they had folded;
    # a batch they were applying meanwhile (from a state read before) lands first.
    await asyncio.sleep(GRACE_S)
    await _write_again(p, report, progress)
    # Said again once written: a process that folded from a model between the two
    # drops that too, and what it wrote meanwhile is written once more.
    await stores[0].keys.announce(ref)
    await asyncio.sleep(GRACE_S)
    await _write_again(p, report, progress)
    report.seconds = time.perf_counter() - started
    return report


async def _write_again(p: Projection, report: ErasureReport, progress: Progress) -> None:
    """Every model of each domain writes its affected aggregates again."""
    total = sum(len(ids) for ids in report.aggregates.values()) * max(1, len(p.domains.models()))
    done = 0
    for domain in p.domains:
        ids = report.aggregates.get(domain.name, [])
        for name in domain.models:
            entry: dict[str, Any] = {"aggregates": 0, "failed": {}}
            report.models[name] = entry
            if not ids:
                continue
            try:
                control = await p.control.get(name)
            except Exception as exc:
                entry["failed"]["*"] = f"control not readable: {exc!r}"
                continue
            pinned = p.domains.decl(name).pinned_version
            if control is None and pinned is None:
                entry["not_built"] = True  # never run here: nothing of it to write again
                continue
            # A pinned model (snapshots) is at its pinned version whoever runs it.
            model = p.model(name, control.active if control is not None else pinned or 1)
            for agg in ids:
                try:
                    if isinstance(model, SnapshotModel):
                        await _resnapshot(p, model, domain.name, agg)
                    else:
                        r = await admin.replay(p, name, aggregate_id=agg)
                        if r.failed:
                            raise RuntimeError("; ".join(r.failed.values()))
                    entry["aggregates"] += 1
                except Exception as exc:
                    log.warning("erasure: %s %s not written again: %r", name, agg, exc)
                    entry["failed"][agg] = repr(exc)
                done += 1
                progress(done, total)
    report.failed = [
        f"{name} {agg}: {why}"
        for name, entry in report.models.items()
        for agg, why in entry["failed"].items()
    ]


async def _resnapshot(p: Projection, model: SnapshotModel[Any], domain: str, agg: str) -> None:
    """Delete the aggregate's snapshots (securely) and take them again from its events
    as they read now."""
    await model.rewind(agg, 0)
    events = await p.domain_store(domain).read_aggregate(agg)
    if events:
        outcome = await model.apply(events)
        if outcome.failed or outcome.waiting:
            raise RuntimeError(f"snapshots of {agg}: {outcome.failed or outcome.waiting}")
