"""What `jetsource projector` does: status, replay, rebuild, cutover, drop, dead letters.

Each function works on a :class:`Projection` and reports progress through a
callback ``(done, total)``, so the CLI draws bars and tests just call them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jetsource.core.clock import to_ns
from jetsource.core.envelope import RecordedEvent
from jetsource.core.ids import validate_aggregate_id
from jetsource.eventstore import jsapi
from jetsource.projector.bootstrap import SPECS, Projection, spec_for
from jetsource.projector.control import BUILDING, LIVE, ControlError, ModelControl
from jetsource.projector.deadletters import DeadLetter
from jetsource.projector.readmodel import ReadModel
from jetsource.projector.runtime import Worker

Progress = Callable[[int, int], None]
APPLY_BATCH = 500


class AdminError(Exception):
    """A refused admin command; the message says why and what to do."""


def _quiet(done: int, total: int) -> None:
    pass


async def _control(p: Projection, name: str) -> ModelControl:
    spec_for(name, 1)  # validates the name
    return await p.control.ensure(name, 1)


async def _stream_last_seq(p: Projection) -> int:
    info = await p.store.stream_info()
    return int(info["state"]["last_seq"])


# -- status ----------------------------------------------------------------------


async def status(p: Projection) -> list[dict[str, Any]]:
    last = await _stream_last_seq(p)
    rows: list[dict[str, Any]] = []
    for name in SPECS:
        control = await p.control.get(name)
        if control is None:
            rows.append({"model": name, "version": "-", "state": "not started"})
            continue
        for version, state in sorted(control.versions.items()):
            model = p.model(name, version)
            checkpoint = await model.checkpoint()
            info = await jsapi.consumer_info(
                p.store._replies,
                p.store.settings.stream,
                model.spec.durable,
                p.store.settings.request_timeout_s,
            )
            pending = int(info["num_pending"]) + int(info["num_ack_pending"]) if info else last
            rows.append(
                {
                    "model": name,
                    "version": version,
                    "active": version == control.active,
                    "state": state,
                    "checkpoint": checkpoint.seq,
                    "applied": checkpoint.applied,
                    "lag": pending,
                    "stream_last_seq": last,
                    "dead_letters": await p.dead_letters.count(model.spec),
                }
            )
    return rows


# -- replay ----------------------------------------------------------------------


@dataclass
class ReplayReport:
    model: str
    version: int
    events: int = 0  # in the slice
    reapplied: int = 0
    carried_forward: int = 0  # later events of a rewound aggregate, applied again after
    aggregates: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


async def _apply_all(model: ReadModel, events: list[RecordedEvent], report: ReplayReport) -> int:
    applied = 0
    for i in range(0, len(events), APPLY_BATCH):
        outcome = await model.apply(events[i : i + APPLY_BATCH])
        applied += outcome.applied
        report.failed.update(outcome.failed)
        report.failed.update({s: r for s, r in outcome.waiting.items()})
    return applied


async def replay(
    p: Projection,
    name: str,
    aggregate_id: str | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    from_time: datetime | int | None = None,
    to_time: datetime | int | None = None,
    progress: Progress = _quiet,
) -> ReplayReport:
    """Re-apply a slice of the stream to the active version of a model.

    Each aggregate in the slice is first put back to its state right before its
    first event in the slice, then the slice is applied; events of that aggregate
    after the slice (up to where the model was) are applied again after it, so the
    model ends where it was, with the slice's effects recomputed.
    """
    started = time.perf_counter()
    control = await _control(p, name)
    model = p.model(name, control.active)
    report = ReplayReport(name, control.active)
    if aggregate_id is not None:
        validate_aggregate_id(aggregate_id, field="aggregate")
    low = from_seq or 1
    if from_time is not None:
        low = max(low, await p.store.seq_at_time(to_ns(from_time) - 1) + 1)
    checkpoint = await model.checkpoint()
    high = min(to_seq, checkpoint.seq) if to_seq is not None else checkpoint.seq
    if to_time is not None:
        high = min(high, await p.store.seq_at_time(to_time))
    if low < 1 or high < low:
        report.seconds = time.perf_counter() - started
        return report
    subject = f"{p.store.settings.subject_prefix}.{aggregate_id}.>" if aggregate_id else None
    events = [e async for e in p.store.read_all(low, high, subject)]
    report.events = len(events)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for e in events:
        first.setdefault(e.aggregate_id, e.version)
        last[e.aggregate_id] = e.version
    report.aggregates = len(first)
    total = len(events) + len(first)
    done = 0
    previous: dict[str, int] = {}
    for agg, version in first.items():
        previous[agg] = await model.rewind(agg, version - 1)
        done += 1
        progress(done, total)
    for i in range(0, len(events), APPLY_BATCH):
        chunk = events[i : i + APPLY_BATCH]
        report.reapplied += await _apply_all(model, chunk, report)
        done += len(chunk)
        progress(done, total)
    for agg, was in previous.items():
        if was > last[agg]:
            later = await p.store.read_aggregate(agg, from_version=last[agg] + 1, to_version=was)
            report.carried_forward += await _apply_all(model, later, report)
    report.seconds = time.perf_counter() - started
    return report


# -- rebuild, cutover, drop --------------------------------------------------------


@dataclass
class RebuildReport:
    model: str
    version: int
    applied: int
    checkpoint: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.applied / self.seconds if self.seconds else 0.0


async def rebuild(
    p: Projection, name: str, to_version: int, progress: Progress = _quiet
) -> RebuildReport:
    """Build ``to_version`` side by side from the start of the stream, catch up with
    live traffic, then hand it to the projector service (state ``live``). Resumes
    where it stopped if run again."""
    started = time.perf_counter()
    control = await _control(p, name)
    spec_for(name, to_version)
    state = control.versions.get(to_version)
    if state == LIVE:
        raise AdminError(
            f"{name} v{to_version} is already built and live"
            + (" and active" if control.active == to_version else "; cut over to it or drop it")
        )
    if state is None:
        control.versions[to_version] = BUILDING
        control = await p.control.save(name, control)
    model = p.model(name, to_version)
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    task = asyncio.create_task(worker.run(until_caught_up=True))
    try:
        while not task.done():
            total = await _stream_last_seq(p)
            progress(min(worker.stats.last_seq, total), total)
            await asyncio.wait([task], timeout=0.5)
        await task
    finally:
        if not task.done():
            worker.stop()
            await asyncio.wait([task], timeout=p.settings.projector.shutdown_grace_s)
    total = await _stream_last_seq(p)
    progress(total, total)
    for _ in range(10):
        control = await _control(p, name)
        control.versions[to_version] = LIVE
        try:
            await p.control.save(name, control)
            break
        except ControlError:
            continue
    checkpoint = await model.checkpoint()
    return RebuildReport(
        name, to_version, worker.stats.applied, checkpoint.seq, time.perf_counter() - started
    )


async def cutover(
    p: Projection, name: str, version: int, drop_old: bool = False, max_lag: int = 1000
) -> dict[str, Any]:
    """Make ``version`` the one queries read: one compare-and-set of the control entry."""
    control = await _control(p, name)
    if control.versions.get(version) != LIVE:
        raise AdminError(
            f"{name} v{version} is not built (state: {control.versions.get(version, 'absent')}); "
            f"run `jetsource projector rebuild --model {name} --to-version {version}` first"
        )
    spec = spec_for(name, version)
    info = await jsapi.consumer_info(
        p.store._replies, p.store.settings.stream, spec.durable, p.store.settings.request_timeout_s
    )
    lag = int(info["num_pending"]) + int(info["num_ack_pending"]) if info else -1
    if lag < 0 or lag > max_lag:
        raise AdminError(
            f"{name} v{version} is {lag} events behind (limit {max_lag}); is the projector running?"
        )
    old = control.active
    control.active = version
    await p.control.save(name, control)
    result: dict[str, Any] = {"model": name, "active": version, "previous": old, "lag": lag}
    if drop_old and old != version:
        result["dropped"] = await drop(p, name, old)
    return result


async def drop(p: Projection, name: str, version: int) -> int:
    """Delete a model version that queries no longer read: namespace and consumer."""
    control = await _control(p, name)
    if control.active == version:
        raise AdminError(f"{name} v{version} is active; cut over to another version first")
    control.versions.pop(version, None)
    await p.control.save(name, control)
    spec = spec_for(name, version)
    await jsapi.delete_consumer(
        p.store._replies, p.store.settings.stream, spec.durable, p.store.settings.request_timeout_s
    )
    return await p.model(name, version).drop()


# -- dead letters -------------------------------------------------------------------


async def dlq_list(
    p: Projection, name: str | None = None, aggregate_id: str | None = None
) -> list[DeadLetter]:
    out = []
    names = [name] if name else list(SPECS)
    for n in names:
        control = await p.control.get(n)
        versions = sorted(control.versions) if control else [1]
        for v in versions:
            out += await p.dead_letters.list(spec_for(n, v), aggregate_id or ">")
    return sorted(out, key=lambda d: (d.model, d.version, d.original_seq))


@dataclass
class DlqReport:
    done: list[int] = field(default_factory=list)  # dlq sequences cleared
    failed: dict[int, str] = field(default_factory=dict)


async def _select(
    p: Projection, name: str | None, aggregate_id: str | None, dlq_seqs: list[int] | None
) -> list[DeadLetter]:
    letters = await dlq_list(p, name, aggregate_id)
    if dlq_seqs:
        wanted = set(dlq_seqs)
        missing = wanted - {d.dlq_seq for d in letters}
        if missing:
            raise AdminError(f"no dead letter with sequence {', '.join(map(str, sorted(missing)))}")
        letters = [d for d in letters if d.dlq_seq in wanted]
    return letters


async def dlq_retry(
    p: Projection,
    name: str | None = None,
    aggregate_id: str | None = None,
    dlq_seqs: list[int] | None = None,
    progress: Progress = _quiet,
) -> DlqReport:
    """Apply dead letters again, oldest first per aggregate; a success removes the
    entry. A failure stops that aggregate (its later letters stay behind it)."""
    report = DlqReport()
    for _ in range(10):  # the live projector may file more while we work: go again
        letters = await _select(p, name, aggregate_id, dlq_seqs)
        letters = [d for d in letters if d.dlq_seq not in report.failed]
        if not letters:
            break
        stuck: set[tuple[str, int, str]] = set()
        for i, letter in enumerate(letters):
            key = (letter.model, letter.version, letter.aggregate_id)
            if key in stuck:
                report.failed[letter.dlq_seq] = "behind a dead letter that failed again"
                continue
            reason = await _retry_one(p, letter)
            if reason is None:
                await p.dead_letters.delete(letter.dlq_seq)
                report.done.append(letter.dlq_seq)
            else:
                report.failed[letter.dlq_seq] = reason
                stuck.add(key)
            progress(i + 1, len(letters))
        if dlq_seqs:
            break
    return report


async def _retry_one(p: Projection, letter: DeadLetter) -> str | None:
    raw = await jsapi.direct_get(
        p.store._replies,
        p.store.settings.stream,
        {"seq": letter.original_seq},
        p.store.settings.request_timeout_s,
    )
    if raw is None:
        return f"stream sequence {letter.original_seq} is gone"
    try:
        record = p.store.decode(raw)
    except Exception as exc:
        return f"still undecodable: {exc}"
    model = p.model(letter.model, letter.version)
    outcome = await model.apply([record])
    if record.stream_seq in outcome.done:
        return None
    return outcome.failed.get(record.stream_seq) or outcome.waiting.get(
        record.stream_seq, "not applied"
    )


async def dlq_discard(
    p: Projection,
    name: str | None = None,
    aggregate_id: str | None = None,
    dlq_seqs: list[int] | None = None,
) -> DlqReport:
    """Give up on dead letters: the model steps its aggregate past each one without
    applying it. Only an aggregate's oldest letter can go (the others wait behind)."""
    report = DlqReport()
    letters = await _select(p, name, aggregate_id, dlq_seqs)
    everything = await dlq_list(p, name, aggregate_id)
    for letter in letters:
        earlier = [
            d
            for d in everything
            if (d.model, d.version, d.aggregate_id)
            == (letter.model, letter.version, letter.aggregate_id)
            and d.original_seq < letter.original_seq
            and d.dlq_seq not in report.done
        ]
        if earlier:
            report.failed[letter.dlq_seq] = (
                f"behind dead letter {earlier[0].dlq_seq} of the same aggregate; "
                "retry or discard that one first"
            )
            continue
        model = p.model(letter.model, letter.version)
        if await model.skip(letter.aggregate_id, letter.original_seq):
            await p.dead_letters.delete(letter.dlq_seq)
            report.done.append(letter.dlq_seq)
        else:
            report.failed[letter.dlq_seq] = "the model is not right before this event"
    return report
