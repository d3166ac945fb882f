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
from jetsource.core.codec import UnknownEvent
from jetsource.core.errors import JetsourceError, ValidationError
from jetsource.core.printable import not_recorded
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import BUILDING, LIVE, RESETTING
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
    # Model versions dropped (or being reset) by another run during the erase: emptied,
    # nothing of them left to erase; said, not failed (exit 0 if the rest was written).
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "subject_ref": self.subject_ref,
            "key_destroyed": self.key_destroyed,
            "scanned_events": self.scanned,
            "aggregates": self.aggregates,
            "models": self.models,
            "failed": self.failed,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


def check_subject(subject: str) -> None:
    """Refuse only a subject no write path records: "" (no subject named) and what the
    one-line rule refuses (a control character, U+2028/U+2029: core.printable's
    not_one_line_at, the rule model.one_line holds a context command's actor to, as
    ``projector replay --actor`` does). A subject that shows nothing ("\u3164", "\u200b",
    " ") is one a context command takes and records as its actor (created_by, author,
    sealed under its key): refused, that person could not be erased."""
    if not subject:
        raise ValidationError("the subject to erase is empty", field="subject")
    refusal = not_recorded(subject, "the subject", "a subject")
    if refusal is not None:
        raise ValidationError(refusal, field="subject")
    if len(subject) > MAX_SUBJECT:
        raise ValidationError(
            f"the subject is longer than {MAX_SUBJECT} characters", field="subject"
        )


def _overlapping(entries: list[Any]) -> list[list[Any]]:
    """Manifest entries in groups whose sequence ranges overlap (in order of their
    first sequence): no sequence is held by segments of two groups."""
    groups: list[list[Any]] = []
    last = -1
    for entry in sorted(entries, key=lambda e: e.first_seq):
        if groups and entry.first_seq <= last:
            groups[-1].append(entry)
        else:
            groups.append([entry])
        last = max(last, entry.last_seq) if len(groups[-1]) > 1 else entry.last_seq
    return groups


async def holders(
    store: JetStreamEventStore, ref: bytes, archive: Any = None
) -> tuple[list[str], int]:
    """Aggregates of a store's stream with a box under ``ref``, and how many events
    were read (envelopes only: no payload is decoded, no key is needed). With the
    stream's ``archive`` (a compacted stream), its sealed segments too: a story whose
    events naming the subject were all compacted was not found, and its snapshot
    and read models kept the subject's values in the clear."""
    await store.start()
    cfg = store.settings
    found: dict[str, None] = {}
    seen = 0
    prefix = f"{cfg.subject_prefix}."

    def look(subject: str, data: bytes) -> None:
        envelope = EventEnvelope()
        try:
            envelope.ParseFromString(data)
        except Exception:
            return  # not an event (voided or corrupt): nothing of anyone is sealed in it
        if any(box.key_ref == ref for box in envelope.sealed):
            found[subject[len(prefix) :].split(".", 1)[0]] = None

    if archive is not None:  # one segment at a time (an archive may not fit in memory)
        for cluster in _overlapping(await archive.entries()):
            # Segments may overlap (two archivers, a rewrite): each sequence is looked
            # at once. One bit per sequence the overlapping segments span (100M
            # archived events: 12 MB; a set of every archived sequence took ~6 GB).
            low = cluster[0].first_seq
            looked = bytearray((max(e.last_seq for e in cluster) - low) // 8 + 1)
            for entry in cluster:
                for m in await archive.read(entry, cache=False):
                    at = m.seq - low
                    if not m.subject.startswith(prefix) or not 0 <= at < 8 * len(looked):
                        continue  # not an event, or not where its entry says: not read
                    bit = 1 << (at & 7)
                    if not looked[at >> 3] & bit:
                        looked[at >> 3] |= bit
                        seen += 1
                        look(m.subject, m.data)
    async for raw in jsapi.direct_get_batch(
        store._replies, cfg.stream, f"{cfg.subject_prefix}.>", 1, cfg.request_timeout_s
    ):
        seen += 1
        look(raw.subject, raw.data)
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
    unscanned = await _scan(p, ref, report)
    if not report.aggregates:
        report.failed = unscanned
        report.seconds = time.perf_counter() - started
        return report
    # Two passes (see below), one count: progress only moves forward and ends at
    # its total.
    tally = _Tally(progress)
    plan = await _plan(p, report)
    tally.total = 2 * sum(len(ids) * len(versions) for _, _, ids, versions in plan)
    # Running processes heard the erasure and dropped the states they had folded;
    # a batch they were applying meanwhile (from a state read before) lands first.
    await asyncio.sleep(GRACE_S)
    await _write_again(p, report, plan, tally)
    # Said again once written: a process that folded from a model between the two
    # drops that too, and what it wrote meanwhile is written once more. The versions
    # are looked up again: one a rebuild started meanwhile is written too.
    await stores[0].keys.announce(ref)
    await asyncio.sleep(GRACE_S)
    plan = await _plan(p, report)
    tally.total = max(tally.total, tally.done + sum(len(ids) * len(v) for _, _, ids, v in plan))
    await _write_again(p, report, plan, tally)
    tally.finish()
    report.failed = unscanned + report.failed
    report.seconds = time.perf_counter() - started
    return report


async def _scan(p: Projection, ref: bytes, report: ErasureReport) -> list[str]:
    """Each domain's aggregates holding a box under ``ref`` into ``report`` (and the
    events read); what could not be scanned (an archive that did not read) is
    returned, said, and makes the run exit 1."""
    unscanned: list[str] = []
    for domain in p.domains:
        store = p.domain_store(domain.name)
        archive = p.archive_of(store)  # shared with the rewrites
        try:
            found, seen = await holders(store, ref, archive)
        except JetsourceError as exc:  # a damaged or unreachable archive: the live rest
            if archive is None:
                raise
            unscanned.append(
                f"archive of {store.settings.stream} not scanned ({exc}): stories whose "
                "events naming the subject are only there were not written again; run "
                "the same erase again once `jetsource archive verify` passes"
            )
            found, seen = await holders(store, ref)
        report.scanned += seen
        if found:
            report.aggregates[domain.name] = found
    return unscanned


async def plan_erasure(p: Projection, subject: str) -> ErasureReport:
    """What :func:`erase_subject` would do, changing nothing (``erase --dry-run``): the
    same checks, the same scan and the same plan of model versions, no key destroyed,
    nothing written. ``key_destroyed`` says whether there is a key to destroy; each
    model's ``versions`` counts the aggregates each version would write again (a
    model version written meanwhile, e.g. a rebuild started, is not in it)."""
    started = time.perf_counter()
    check_subject(subject)
    report = ErasureReport()
    keys = next(iter(p.stores.values())).keys
    ref = await keys.ref_of(subject)
    if ref is None:  # no pepper: nothing was ever sealed anywhere
        report.seconds = time.perf_counter() - started
        return report
    report.subject_ref = ref.hex()
    report.key_destroyed = await keys.holds(ref)
    unscanned = await _scan(p, ref, report)
    if report.aggregates:
        for _, name, ids, versions in await _plan(p, report):
            entry = report.models[name]
            entry["versions"] = {str(v): len(ids) for v in versions}
            entry["aggregates"] = len(ids) if versions else 0
    report.failed = unscanned + [
        f"{name} {agg}: {why}"
        for name, entry in report.models.items()
        for agg, why in entry["failed"].items()
    ]
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Tally:
    """Progress over both passes: ``done`` never goes back, the last call is
    ``(total, total)``."""

    progress: Progress
    done: int = 0
    total: int = 0

    def step(self) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        self.progress(self.done, self.total)

    def finish(self) -> None:
        self.total = max(self.total, self.done)
        self.progress(self.total, self.total)


# (domain, model, aggregate ids, versions to write again)
Plan = list[tuple[str, str, list[str], list[int]]]


async def _plan(p: Projection, report: ErasureReport) -> Plan:
    """Every version of every model of the affected domains that holds (or is being
    built with) data: live ones, active or not (a cutover back would serve them),
    and ones being built (they may have applied the subject's events already). A
    version being dropped or reset is being emptied: nothing of it to write."""
    plan: Plan = []
    for domain in p.domains:
        ids = report.aggregates.get(domain.name, [])
        for name in domain.models:
            entry = report.models.setdefault(name, {"aggregates": 0, "versions": {}, "failed": {}})
            if not ids:
                continue
            pinned = p.domains.decl(name).pinned_version
            if pinned is not None:  # a pinned model (snapshots) is at its pinned version
                plan.append((domain.name, name, ids, [pinned]))
                continue
            try:
                control = await p.control.get(name)
            except Exception as exc:
                entry["failed"]["*"] = f"control not readable: {exc!r}"
                continue
            if control is None:
                entry["not_built"] = True  # never run here: nothing of it to write again
                continue
            versions = sorted(v for v, s in control.versions.items() if s in (LIVE, BUILDING))
            plan.append((domain.name, name, ids, versions))
    return plan


def _failed_version(key: str) -> int | None:
    """The version of a ``failed`` key ("AGG vN", "* vN"); None for "*"."""
    _, _, tail = key.rpartition(" v")
    return int(tail) if tail.isdigit() else None


async def _emptied(p: Projection, name: str, version: int) -> str | None:
    """What another run did to ``version`` meanwhile when it is no longer live nor
    being built: "dropped" (marked, or gone from the entry) or "being reset"; None
    when it still holds data (or the entry does not read: a failure stays one)."""
    try:
        control = await p.control.get(name)
    except Exception:
        return None
    if control is None:
        return None
    state = control.versions.get(version)
    if state in (LIVE, BUILDING):
        return None
    return "being reset" if state == RESETTING else "dropped"


def _skip(report: ErasureReport, name: str, version: int, doing: str) -> None:
    """``version`` of ``name`` was emptied by another run during the erase: what any
    pass failed on in it is no failure (nothing of it is left to erase), the report
    says it once."""
    entry = report.models[name]
    for key in [k for k in entry["failed"] if _failed_version(k) == version]:
        del entry["failed"][key]
    entry["versions"].pop(str(version), None)
    emptied = entry.setdefault("emptied_meanwhile", {})
    if str(version) in emptied:
        return
    emptied[str(version)] = doing
    why = (
        # Until that reset ends, queries read the values it has not yet rebuilt (the
        # erased ones among them): a reset that stopped is finished by running it again.
        f"its rebuild reads the events as erased; if that reset stopped, finish it with "
        f"`jetsource projector reset {name} --yes`"
        if doing == "being reset"
        else "nothing of it left to erase"
    )
    report.skipped.append(
        f"{_skipped_prefix(name, version)}{doing} by another run meanwhile ({why})"
    )


def _skipped_prefix(name: str, version: int) -> str:
    return f"{name} v{version}: "


def _unskip(report: ErasureReport, name: str, version: int) -> None:
    """``version`` of ``name``, emptied by another run during a pass before, was built
    again and this pass wrote it: it is no longer skipped (the report said it both
    skipped and written)."""
    entry = report.models[name]
    emptied = entry.get("emptied_meanwhile")
    if not emptied or emptied.pop(str(version), None) is None:
        return
    if not emptied:
        del entry["emptied_meanwhile"]
    prefix = _skipped_prefix(name, version)
    report.skipped = [s for s in report.skipped if not s.startswith(prefix)]


async def _write_again(p: Projection, report: ErasureReport, plan: Plan, tally: _Tally) -> None:
    """Every planned model version writes its affected aggregates again. A version
    another run drops (or resets) meanwhile is skipped and said so, not failed: a
    write into it that fails on the drop stops its pass, and what a pass before
    failed on in a version this plan no longer has (dropped or being reset since) is
    no failure either. That failure made the erase exit 1 and "run the same erase
    again", whose plan no longer had the version. One skipped in a pass before and
    built again since is written by this pass and no longer said skipped."""
    for domain, name, ids, versions in plan:
        entry = report.models[name]
        entry["failed"].pop("*", None)
        for key in list(entry["failed"]):
            gone = _failed_version(key)
            if gone is not None and gone not in versions:
                doing = await _emptied(p, name, gone)
                if doing is not None:
                    _skip(report, name, gone, doing)
        written = {agg: 0 for agg in ids}
        emptied: set[int] = set()
        # The control entry read once per version on its first failure (not once per
        # failed story: a store away failed every story with one read each) and once
        # more after its stories, when one failed, for a drop that came after that read.
        asked: set[int] = set()
        for version in versions:
            try:
                model = p.model(name, version)
            except Exception as exc:  # a version this code does not know: say so
                entry["failed"][f"* v{version}"] = f"model not available here: {exc!r}"
                continue
            here: list[str] = []  # written in this version
            for i, agg in enumerate(ids):
                key = f"{agg} v{version}"
                try:
                    if isinstance(model, SnapshotModel):
                        await _resnapshot(p, model, domain, agg)
                    else:
                        r = await admin.replay(p, name, aggregate_id=agg, version=version)
                        if r.failed:
                            raise RuntimeError("; ".join(r.failed.values()))
                    entry["failed"].pop(key, None)
                    here.append(agg)
                except Exception as exc:
                    doing = None
                    # (pinned: no versions)
                    if not isinstance(model, SnapshotModel) and version not in asked:
                        asked.add(version)
                        doing = await _emptied(p, name, version)
                    if doing is not None:
                        log.info("erasure: %s v%d %s by another run", name, version, doing)
                        _skip(report, name, version, doing)
                        emptied.add(version)
                        for _ in ids[i:]:
                            tally.step()
                        break
                    log.warning("erasure: %s v%d %s not written again: %r", name, version, agg, exc)
                    entry["failed"][key] = repr(exc)
                tally.step()
            if version in asked and version not in emptied:
                doing = await _emptied(p, name, version)  # dropped after the first read
                if doing is not None:
                    _skip(report, name, version, doing)
                    emptied.add(version)
            if version not in emptied:  # (what an emptied one was given is gone)
                entry["versions"][str(version)] = len(here)
                for agg in here:
                    written[agg] += 1
                _unskip(report, name, version)  # emptied in a pass before, built again
        # None written where no version is (all dropped or being reset), as the dry
        # run counts it: every aggregate was "written" in all of no versions. A model
        # a pass before wrote (its version dropped since) keeps what that pass said.
        holding = len(versions) - len(emptied)
        if holding:
            entry["aggregates"] = sum(1 for n in written.values() if n == holding)
        elif not entry["versions"]:
            entry["aggregates"] = 0
    report.failed = [
        f"{name} {agg}: {why}"
        for name, entry in report.models.items()
        for agg, why in entry["failed"].items()
    ]


async def _resnapshot(p: Projection, model: SnapshotModel[Any], domain: str, agg: str) -> None:
    """Delete the aggregate's snapshots (securely) and take them again from its events
    as they read now (across the horizon on a compacted stream: read first, so a
    read that fails leaves the snapshots there; a compacted story lost them all).
    Only up to an event a newer release wrote (dead-lettered, its story parked behind
    it): folded past as a no-op, its snapshots had put the model past it, and the
    retry after the upgrade found it applied and dropped its letter unapplied. One
    discarded from the model's dead letters is a no-op at its place, as live."""
    events = await p.history_of(p.domain_store(domain)).read_aggregate(agg)
    for i, e in enumerate(events):
        if isinstance(e.event, UnknownEvent) and e.event.newer_release:
            control = await p.control.get(model.spec.name)
            if control is None or e.stream_seq not in control.discarded:
                events = events[:i]
                break
    await model.rewind(agg, 0)
    if events:
        outcome = await model.apply(events)
        if outcome.failed or outcome.waiting:
            raise RuntimeError(f"snapshots of {agg}: {outcome.failed or outcome.waiting}")
