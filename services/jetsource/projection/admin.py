"""What `jetsource projector` does: status, replay, rebuild, reset, cutover, drop,
wait, dead letters.

Each function works on a :class:`Projection` and reports progress through a
callback ``(done, total)``, so the CLI draws bars (or prints progress lines) and
tests just call them. A refused command raises :class:`AdminError`; a command whose
arguments cannot make sense (an inverted or empty range, an unknown event type)
raises :class:`UsageError`; a wait that ran out of time raises :class:`WaitTimeout`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from jetsource.core.aio import honour_cancel, wait_for
from jetsource.core.clock import format_rfc3339_ns, now_ns, parse_rfc3339_ns, to_ns
from jetsource.core.codec import UnknownEvent
from jetsource.core.crypto import erasures_heard
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError, EventStoreUnavailableError
from jetsource.core.heap import kept_while
from jetsource.core.ids import uuid7, validate_aggregate_id
from jetsource.core.printable import not_recorded
from jetsource.core.procs import pid_alive
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import voided_event
from jetsource.projection.bootstrap import Projection
from jetsource.projection.contract import ReadModel, TransientError
from jetsource.projection.control import (
    BUILDING,
    DROPPED,
    LIVE,
    RESETTING,
    ControlError,
    ModelControl,
    version_dropped,
)
from jetsource.projection.deadletters import NO_STORY, DeadLetter
from jetsource.projection.runtime import Worker

log = logging.getLogger("jetsource.projector")
T = TypeVar("T")
Progress = Callable[[int, int], None]
APPLY_BATCH = 500
BUILD_PULL_EXPIRES_S = 0.5
# Transient store trouble (graph deadlock or restart, Valkey or NATS away) during an
# admin write: tried again with backoff, this many times, before the command fails.
RETRY_ATTEMPTS = 8
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 3.0
# ... and for at most this long in all: a store that accepts connections but never
# answers costs each try its full wait (the graph's 60 s), and 8 of them kept a
# `rebuild` going 8 minutes before it said the graph was away.
RETRY_BUDGET_S = 60.0
# Replay of one aggregate under live writes: compare-and-set at the version it was
# read at, this many times; then at any version up to its head in the stream.
REPLAY_EXACT_ATTEMPTS = 5
REPLAY_ATTEMPTS = 20


# Build progress is written to the control entry (for `projector status`) this often.
PROGRESS_SAVE_S = 2.0


class AdminError(Exception):
    """A refused admin command; the message says why and what to do."""


class UsageError(AdminError):
    """Arguments that cannot make sense: an inverted or empty range, an unknown event
    type, a malformed id. Nothing was done. ``field`` names the option at fault (for
    scripts: JSON errors carry it)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class WaitTimeout(AdminError):
    """``wait`` ran out of time before the version was live and caught up."""


class Meter:
    """Rate and ETA of long work from ``(done, total)`` samples."""

    def __init__(self, start: int = 0) -> None:
        self.started = time.monotonic()
        self.start = start
        self.done = start
        self.total = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed_s
        return (self.done - self.start) / elapsed if elapsed > 0 else 0.0

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        left = max(0, self.total - self.done)
        if not left:
            return 0.0
        rate = self.rate
        return left / rate if rate > 0 else None

    def snapshot(self) -> dict[str, Any]:
        eta = self.eta_s
        return {
            "done": self.done,
            "total": self.total,
            "percent": round(self.percent, 1),
            "rate": round(self.rate, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "elapsed_s": round(self.elapsed_s, 1),
        }


def _stamp() -> str:
    return format_rfc3339_ns(now_ns())


def _quiet(done: int, total: int) -> None:
    pass


async def _control(p: Projection, name: str) -> ModelControl:
    p.spec(name, 1)  # validates the name
    return await p.control.ensure(name, 1)


async def _control_read(p: Projection, name: str) -> ModelControl:
    """The control entry :func:`_control` finds, read only (a dry run): a model with
    no entry (or no control bucket) has what ``ensure`` would make, nothing saved, so
    neither the entry nor the bucket is created."""
    p.spec(name, 1)  # validates the name
    return await p.control.get(name) or ModelControl(1, {1: LIVE})


async def _retry(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``call()``, tried again with exponential backoff while the store says the
    trouble is transient, up to RETRY_ATTEMPTS tries within RETRY_BUDGET_S; the last
    error is raised."""
    delay = RETRY_FIRST_S
    started = time.monotonic()
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return await call()
        except (TransientError, EventStoreUnavailableError) as exc:
            if attempt == RETRY_ATTEMPTS or time.monotonic() - started + delay > RETRY_BUDGET_S:
                raise
            log.warning("%s: %s; again in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
    raise AssertionError("unreachable")


async def _save(p: Projection, name: str, change: Callable[[ModelControl], None]) -> ModelControl:
    """Read, change and compare-and-set the control entry; again if it moved."""
    for _ in range(20):
        control = await _control(p, name)
        change(control)
        try:
            return await p.control.save(name, control)
        except ControlError:
            await asyncio.sleep(0.05)
    raise AdminError(f"the control entry of {name} keeps changing; try again")


# A run of rebuild, reset or drop renews its claim on the version this often; a claim
# not renewed for CLAIM_STALE_S belongs to a run that stopped (killed, crashed, or
# cut off from NATS), and the next command takes it over and resumes the work.
CLAIM_BEAT_S = 2.0
CLAIM_STALE_S = 15.0


class Busy(AdminError):
    """Another run holds the version (a fresh claim)."""

    def __init__(self, message: str, claim: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.claim = claim or {}


def claim_age_s(claim: dict[str, Any] | None) -> float | None:
    """Seconds since the claim's holder last renewed it (None: no claim)."""
    if not claim:
        return None
    return max(0.0, (now_ns() - int(claim.get("heartbeat_ns", 0))) / 1e9)


def _pid_space() -> str | None:
    """Where this process's pids mean something (Linux): this boot of this machine
    (``/proc/sys/kernel/random/boot_id``) and this PID namespace. The host's own PID
    namespace has the same id on every machine, and host names repeat (cloned VMs,
    compose's ``hostname:``), so neither alone says "here". None where either cannot
    be read: no claim is then taken as gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            boot_id = boot.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot_id} {namespace}" if boot_id else None


def _checked_here(claim: dict[str, Any] | None) -> bool:
    """The claim's holder ran in this boot of this machine and this PID namespace
    (:func:`_pid_space`), as another process: whether it is gone can be seen here."""
    if not claim or claim.get("host") != socket.gethostname():
        return False
    here = _pid_space()
    if here is None or claim.get("pid_space") != here:
        return False
    pid = claim.get("pid")
    return isinstance(pid, int) and pid > 0 and pid != os.getpid()


def holder_gone(claim: dict[str, Any] | None) -> bool:
    """The claim's holder ran in this boot of this machine and this PID namespace
    (:func:`_pid_space`) and its process is gone (killed: kill -9, OOM): no heartbeat
    will come, so its claim need not go stale first. A holder elsewhere, or a pid
    alive here (a pid used again counts as alive), says nothing of the kind."""
    return _checked_here(claim) and not pid_alive(int((claim or {})["pid"]))


def taken_over_when(claim: dict[str, Any]) -> str:
    """When this command run again takes ``claim`` over if its run is gone, as the
    rule for its holder says: at once where its process can be looked for here (this
    boot, this PID namespace: :func:`holder_gone`), else CLAIM_STALE_S after its last
    heartbeat (another machine or container, a clone of the same name, this process).
    A busy refusal said "after 15 s" of both."""
    if _checked_here(claim):
        return f"at once (its process, pid {claim.get('pid')}, is looked for on this machine)"
    left = max(0.0, CLAIM_STALE_S - (claim_age_s(claim) or 0.0))
    return (
        f"{CLAIM_STALE_S:g} s after its last heartbeat (in {left:.0f} s: its process, on "
        f"{claim.get('host', '?')}, cannot be looked for from here)"
    )


def claim_fresh(claim: dict[str, Any] | None) -> bool:
    """A run holds it: renewed within CLAIM_STALE_S, by a process not known gone."""
    age = claim_age_s(claim)
    return age is not None and age < CLAIM_STALE_S and not holder_gone(claim)


def describe_claim(claim: dict[str, Any]) -> str:
    return (
        f"{claim.get('op', '?')} on {claim.get('host', '?')} pid {claim.get('pid', '?')}, "
        f"heartbeat {claim_age_s(claim) or 0:.1f} s ago"
    )


class Lease:
    """One admin run's claim on a model version, in its control entry, renewed in the
    background while the run works. Taking it is one compare-and-set together with
    the run's own state change; ``lost`` turns true when another run took it over
    (after this one's heartbeats stopped reaching NATS for CLAIM_STALE_S)."""

    def __init__(self, p: Projection, name: str, version: int, op: str) -> None:
        self.p, self.name, self.version, self.op = p, name, version, op
        self.owner = uuid7()
        self.lost = False
        self._task: asyncio.Task[None] | None = None

    def _body(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "op": self.op,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_space": _pid_space(),
            "heartbeat_ns": now_ns(),
            "heartbeat_at": _stamp(),
        }

    def held_by_other(self, c: ModelControl) -> dict[str, Any] | None:
        held = c.claims.get(self.version)
        if held and held.get("owner") != self.owner and claim_fresh(held):
            return held
        return None

    async def take(
        self, change: Callable[[ModelControl], None], over: frozenset[str] = frozenset()
    ) -> ModelControl:
        """``change`` and the claim in one write; :class:`Busy` when another run holds
        a fresh claim (unless its command is one of ``over``: a drop fences a build)."""

        orphan: dict[str, Any] | None = None

        def claim(c: ModelControl) -> None:
            nonlocal orphan
            held = self.held_by_other(c)
            if held is not None and held.get("op") not in over:
                raise Busy(
                    f"{self.name} v{self.version} is held by another run ({describe_claim(held)})",
                    held,
                )
            before = c.claims.get(self.version)
            orphan = before if held is None and before and holder_gone(before) else None
            change(c)
            c.claims[self.version] = self._body()

        control = await _save(self.p, self.name, claim)
        if orphan is not None:  # said on stderr (JSON: a "warning" line) by the CLI
            log.warning(
                "%s v%d: took over the claim of a run whose process is gone (%s): it was "
                "not waited out",
                self.name,
                self.version,
                describe_claim(orphan),
            )
        self._task = asyncio.create_task(self._beat(), name=f"lease {self.name} v{self.version}")
        return control

    async def _beat(self) -> None:
        def renew(c: ModelControl) -> None:
            if (c.claims.get(self.version) or {}).get("owner") != self.owner:
                raise Busy("taken over")
            c.claims[self.version] = self._body()

        while True:
            await asyncio.sleep(CLAIM_BEAT_S)
            try:
                await _save(self.p, self.name, renew)
            except Busy:
                self.lost = True
                return
            except Exception as exc:  # NATS away: the next beat tries again
                log.warning("%s v%d: claim not renewed: %r", self.name, self.version, exc)

    async def release(self) -> None:
        """Stop renewing and remove the claim if it is still this run's; best effort
        (a claim left behind goes stale by itself)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

        def drop_claim(c: ModelControl) -> None:
            if (c.claims.get(self.version) or {}).get("owner") == self.owner:
                del c.claims[self.version]

        try:
            await wait_for(_save(self.p, self.name, drop_claim), 3.0)
        except (Exception, asyncio.CancelledError) as exc:
            log.warning("%s v%d: claim not released: %r", self.name, self.version, exc)


async def _stream_last_seq(p: Projection, name: str) -> int:
    info = await p.store_for(name).stream_info()
    return int(info["state"]["last_seq"])


# -- status ----------------------------------------------------------------------


# The longest one model's status rows may take (its stores' answers): past it the row
# says ``unavailable``, naming the bound.
STATUS_TIMEOUT_S = 10.0


async def status(p: Projection) -> list[dict[str, Any]]:
    """A row per version of every model of every registered domain: its domain and
    stream, state (building, resetting, live, dropped; ``stalled`` when its consumer
    has work and acknowledged nothing for ``stall_after_s``; ``not started`` when no
    consumer exists yet; ``unavailable`` with ``error`` when a store did not answer),
    checkpoint, applied count, lag, dead letters, the build ``progress`` of a
    version being built (percent, rate, ETA) and the model's ``last_replay`` run. A
    model whose version follows a schema (snapshots) is listed at that version."""

    async def rows_of(name: str) -> list[dict[str, Any]]:
        bound = asyncio.timeout(STATUS_TIMEOUT_S)
        try:
            async with bound:
                return await _status_rows(p, name)
        except Exception as exc:  # one store away: the other models are still shown
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, TimeoutError) and bound.expired():  # (not a store's own)
                error = f"TimeoutError: its stores did not answer within {STATUS_TIMEOUT_S:g} s"
        return [
            {
                "domain": p.domains.owner(name).name,
                "stream": p.store_for(name).settings.stream,
                "model": name,
                "version": "-",
                "state": "unavailable",
                "error": error,
            }
        ]

    # Every model at once, each within its bound: a store that accepts connections
    # and never answers (a graph's one Bolt call may wait 60 s) costs the report
    # STATUS_TIMEOUT_S, not a minute per model of that store.
    found = await asyncio.gather(*(rows_of(name) for name in p.model_names()))
    return [row for rows in found for row in rows]


async def _status_rows(p: Projection, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    stall_after_s = p.settings.projector.stall_after_s
    store = p.store_for(name)
    domain = p.domains.owner(name)
    last = await _stream_last_seq(p, name)
    pinned = p.pinned_version(name)
    control = await p.control.get(name)
    last_replay = control.last_replay if control is not None else None
    if pinned is not None:
        control = ModelControl(pinned, {pinned: LIVE})
    if control is None:
        return [
            {
                "domain": domain.name,
                "stream": store.settings.stream,
                "model": name,
                "version": "-",
                "state": "not started",
                "last_replay": None,
            }
        ]
    for version, state in sorted(control.versions.items()):
        model = p.model(name, version)
        checkpoint = await model.checkpoint()
        info = await jsapi.consumer_info(
            store._replies,
            store.settings.stream,
            model.spec.durable,
            store.settings.request_timeout_s,
        )
        pending = int(info["num_pending"]) + int(info["num_ack_pending"]) if info else last
        shown = state
        if info is None and state == LIVE:
            shown = "not started"
        elif info is not None and pending and _idle_s(info) > stall_after_s:
            shown = "stalled"
        elif state in (BUILDING, RESETTING) and not claim_fresh(control.claims.get(version)):
            # Nobody runs it (its builder stopped: Ctrl-C, killed, crashed): no ETA
            # to wait for; running the command again resumes it.
            shown = "stopped"
        row: dict[str, Any] = {
            "domain": domain.name,
            "stream": store.settings.stream,
            "model": name,
            "version": version,
            "active": version == control.active,
            "state": shown,
            "checkpoint": checkpoint.seq,
            "applied": checkpoint.applied,
            "lag": pending,
            "stream_last_seq": last,
            "dead_letters": await p.dead_letters.count(model.spec),
            "contract": model.spec.describe(),
            "last_replay": last_replay,
        }
        if state in (BUILDING, RESETTING):
            row["progress"] = control.progress.get(version)
            if version in control.claims:
                row["claim"] = control.claims[version]
        rows.append(row)
    return rows


def _idle_s(info: dict[str, Any]) -> float:
    """Seconds since the consumer last saw an acknowledgement (or, with none yet,
    since it was created)."""
    stamp = (info.get("ack_floor") or {}).get("last_active") or info.get("created")
    if not stamp:
        return 0.0
    try:
        then = parse_rfc3339_ns(stamp)
    except ValueError:
        return 0.0
    return max(0.0, (now_ns() - then) / 1e9)


# -- replay ----------------------------------------------------------------------


@dataclass
class ReplayReport:
    model: str
    version: int
    run_id: str = ""
    selectors: dict[str, Any] = field(default_factory=dict)
    events: int = 0  # in the slice
    last_seq: int = 0  # the stream sequence of the last event replayed
    checkpoint: int = 0  # the model's checkpoint when the slice was read
    reapplied: int = 0
    carried_forward: int = 0  # later events of a rewound aggregate, applied again after
    # Versions a replay wrote past where the model was (a story the live worker was
    # still writing): applied by the replay, so the worker finds them done.
    advanced: int = 0
    aggregates: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


class _Rewindable(Protocol):
    """The rewind every store's model offers: one atomic, guarded write of an
    aggregate at a version, folded from the events given."""

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int: ...


class _VersionFenced(AdminError):
    """The version a replay writes was marked dropped or resetting (or dropped whole)
    since the replay looked: it stops before writing another story."""


Fence = Callable[[], Awaitable[None]]
# How long a replay's fence keeps the version state it read (DropFence's every_s).
FENCE_EVERY_S = 0.25
# The fence of the replay run this task is in (set by _replay_slices): asked by
# _replay_aggregate right before each write, its signature unchanged.
_REPLAY_FENCE: contextvars.ContextVar[Fence | None] = contextvars.ContextVar(
    "replay_fence", default=None
)


def _version_fence(
    p: Projection, name: str, version: int, present: bool, every_s: float = FENCE_EVERY_S
) -> Fence:
    """What a replay asks right before each story's write: :class:`_VersionFenced`
    once ``drop`` or ``reset`` has marked ``version`` (or a drop has removed it, when
    it was in the entry at the start). A replay checked the version's state once, at
    its start: one that met a drop went on writing its stories into the namespace the
    drop was deleting, and a story written after the drop's last check stayed there
    with the version gone from the entry (half dropped). Asked before each write, the
    write comes within the drop's settle time, as a worker's batch does.

    The entry is read at most every ``every_s`` (the first write always reads), the
    state kept that long, as a worker's DropFence does: read per story, it was one
    control round trip per story written (303 reads for 300 stories). A drop waits
    control_poll_s + 1 s after marking before it deletes, and its verify pass deletes
    what was written late, so a write up to ``every_s`` after the mark is still
    removed."""
    checked = -float("inf")
    state: str | None = None
    lock = asyncio.Lock()  # the slices' concurrent writes wait for one read

    async def fence() -> None:
        nonlocal checked, state
        async with lock:
            if time.monotonic() - checked >= every_s:
                try:
                    control = await p.control.get(name)
                except Exception as exc:  # NATS away: not fenced (as a worker's DropFence)
                    log.warning("replay %s v%d: version state not read: %r", name, version, exc)
                    return
                checked = time.monotonic()
                state = control.versions.get(version) if control is not None else None
        if state in (DROPPED, RESETTING) or (present and state is None):
            doing = "being reset" if state == RESETTING else "dropped"
            raise _VersionFenced(
                f"{name} v{version} is {doing} now (another run): the replay stopped before "
                "writing more; the stories it wrote before are whole, the others as they were"
            )

    return fence


async def _replay_aggregate(p: Projection, model: ReadModel, aggregate_id: str) -> tuple[int, int]:
    """Write one aggregate again, whole, in one atomic step guarded by its stored
    version: (the version it was at, the version written).

    The events are read up to the stored version and the write happens only if the
    version is still that one (a live worker that moved it meanwhile: read the new
    events, try again). A story written faster than that is written at its head in
    the stream instead, if the stored version is still at or below it: the live
    worker's own write is guarded by the version it read, so it then finds these
    events applied and acks them. Nothing is ever written half: a failure leaves
    the aggregate as it was."""
    target: _Rewindable = cast(_Rewindable, model)
    name = f"replay {model.spec.name} v{model.spec.version} {aggregate_id}"
    # The whole history, across the horizon on a compacted stream: the live stream
    # alone answered BeyondHorizonError for a compacted story (`projector replay
    # --aggregate`, `erase`), which was then left as it was.
    history = p.history_of(p.store_for(model.spec.name))
    position = await _retry(lambda: model.position(aggregate_id), name)
    events: list[RecordedEvent] = []
    heard = erasures_heard()  # the events below are opened after this many erasures

    async def read_up_to(version: int | None) -> None:
        if version is not None and len(events) >= version:
            return
        # From the sequence after the last event read: a hot story's history is not
        # walked again on every attempt.
        after = events[-1].stream_seq + 1 if events else 1
        more = await _retry(
            lambda: history.read_aggregate(
                aggregate_id, from_version=len(events) + 1, to_version=version, from_seq=after
            ),
            name,
        )
        events.extend(more)

    if position:
        await read_up_to(position)
    low = position
    tried: list[str] = []
    for attempt in range(REPLAY_ATTEMPTS):
        if attempt < REPLAY_EXACT_ATTEMPTS:
            version, guard = position, (position, position)
        else:
            await read_up_to(None)
            version, guard = len(events), (low, len(events))
            if version < low:
                raise AdminError(f"{aggregate_id}: stored at {low}, the stream has {version}")

        async def write(v: int = version, g: tuple[int, int] = guard) -> int:
            nonlocal heard
            if heard != erasures_heard():
                # An erasure was heard since these events were read: they hold what
                # it removed, and the model would fold (and keep) them as new. Read
                # them again, as they now read; no await between this check and the
                # model's own count of erasures at the start of its rewind.
                heard = erasures_heard()
                events.clear()
                await read_up_to(v)
            fence = _REPLAY_FENCE.get()
            if fence is not None:  # (after every other await: the write comes next)
                await fence()
            # The model folds (and keeps the fold across attempts): the engine knows
            # no domain's state.
            return await target.rewind(aggregate_id, v, events=events, guard=g)

        current = await _retry(write, name)
        if guard[0] <= current <= guard[1]:
            return current, version
        tried.append(f"{guard[0]}..{guard[1]}: {current}")
        # A live worker moved it (or another replay): start from where it is now.
        position = low = current
        await read_up_to(current)
        del events[current:]
    raise AdminError(
        f"{aggregate_id} kept moving under the replay ({REPLAY_ATTEMPTS} attempts: guard and "
        f"stored version {', '.join(tried[-6:])}); try again"
    )


def _iso(value: datetime | int | None) -> str | None:
    return None if value is None else format_rfc3339_ns(to_ns(value))


def _selectors(
    aggregate_id: str | None,
    from_seq: int | None,
    to_seq: int | None,
    from_time: datetime | int | None,
    to_time: datetime | int | None,
    event_types: Sequence[str] | None,
    actor: str | None,
) -> dict[str, Any]:
    chosen: dict[str, Any] = {
        "aggregate": aggregate_id,
        "from_seq": from_seq,
        "to_seq": to_seq,
        "from_time": _iso(from_time),
        "to_time": _iso(to_time),
        "types": sorted(set(event_types)) if event_types else None,
        "actor": actor,
    }
    return {k: v for k, v in chosen.items() if v is not None}


def validate_slice(
    p: Projection | None,
    name: str,
    aggregate_id: str | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    from_time: datetime | int | None = None,
    to_time: datetime | int | None = None,
    event_types: Sequence[str] | None = None,
    actor: str | None = None,
) -> None:
    """Raise :class:`UsageError` for a slice that cannot select anything: none named,
    a range that is empty or inverted, a malformed story id, an unknown event type
    (checked against the model's domain when ``p`` is given)."""
    if not any(
        x is not None and x != [] for x in (aggregate_id, from_seq, to_seq, from_time, to_time)
    ) and not (event_types or actor is not None):  # an --actor "" is refused below, naming it
        raise UsageError(
            "name a slice: --aggregate, --from-seq/--to-seq, --from-time/--to-time, "
            "--type or --actor",
            field="slice",
        )
    if (from_seq is not None and from_seq < 1) or (to_seq is not None and to_seq < 1):
        raise UsageError(
            "stream sequences start at 1", field="--from-seq" if from_seq == 0 else "--to-seq"
        )
    if from_seq is not None and to_seq is not None and from_seq > to_seq:
        raise UsageError(
            f"--from-seq {from_seq} is after --to-seq {to_seq}: an inverted range",
            field="--from-seq",
        )
    if from_time is not None and to_time is not None and to_ns(from_time) >= to_ns(to_time):
        raise UsageError(
            f"--from-time {_iso(from_time)} is not before --to-time {_iso(to_time)}: "
            "an empty or inverted range",
            field="--from-time",
        )
    if aggregate_id is not None:
        _story_id(aggregate_id)
    # The actor is matched exactly as the write path recorded it, so only what no write
    # path records is refused: "" (no actor named) and what the context commands'
    # one-line rule refuses (model.one_line, the same core.printable function). The
    # shared blank rule refused "\u3164" and "\u200b", which a context command takes and
    # records as its actor: events no replay could select.
    if actor is not None:
        if not actor:
            raise UsageError("--actor must not be empty", field="--actor")
        refusal = not_recorded(actor, "--actor", "an actor")
        if refusal is not None:
            raise UsageError(refusal, field="--actor")
    if p is not None and event_types:
        registry = p.domains.owner(name).registry
        known = set(registry.event_types())
        # A domain whose callers name their types (a fallback message) knows every
        # type its rule accepts.
        unknown = sorted(
            t
            for t in set(event_types) - known
            if registry.fallback is None or not registry.valid_type(t)
        )
        if unknown:
            raise UsageError(
                f"unknown event type {', '.join(unknown)} for {name}; known: "
                f"{', '.join(sorted(known))}",
                field="--type",
            )


def validate_aggregate(aggregate_id: str | None) -> None:
    """dlq list, retry and discard's --aggregate: :class:`UsageError` naming it for an
    id no dead letter is filed under (checked before anything is read): in a
    dead-letter subject a wildcard ('*') matched every story's letters. A story's id,
    or ``_`` (deadletters.NO_STORY): the letters of messages on subjects naming no
    story a writer takes are filed under it, and dlq list shows it."""
    if aggregate_id is not None and aggregate_id != NO_STORY:
        _story_id(aggregate_id)


def _story_id(aggregate_id: str) -> None:
    try:
        validate_aggregate_id(aggregate_id, field="aggregate")
    except ValueError as exc:
        raise UsageError(str(exc), field="--aggregate") from exc


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


def validate_run_id(run_id: str | None) -> None:
    """A replay's name, shown by `projector status`: 1 to 100 letters, digits and
    ``. _ : -``, or None for a new uuid7."""
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        raise UsageError(
            f"--run-id {run_id[:40]!r} is invalid: 1 to 100 letters, digits, '.', '_', "
            "':' or '-', starting with a letter or digit",
            field="--run-id",
        )


async def _record_replay(p: Projection, name: str, entry: dict[str, Any]) -> None:
    """The model's last replay run, where `projector status` shows it; never fails
    the replay it describes."""

    def put(c: ModelControl) -> None:
        c.last_replay = entry

    try:
        await _save(p, name, put)
    except Exception as exc:
        log.warning("replay %s: run %s not recorded: %r", name, entry.get("run_id"), exc)


async def replay(
    p: Projection,
    name: str,
    aggregate_id: str | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    from_time: datetime | int | None = None,
    to_time: datetime | int | None = None,
    progress: Progress = _quiet,
    event_types: Sequence[str] | None = None,
    actor: str | None = None,
    run_id: str | None = None,
    version: int | None = None,
    dry_run: bool = False,
) -> ReplayReport:
    """Re-apply a slice of the stream to the active version of a model (or to
    ``version``, one that is live or being built: erasure and repair write every
    version that holds data, not only the one queries read).

    The slice is chosen by any of: one aggregate, a stream sequence range, a time
    range, event types and the actor recorded in the events' envelope metadata
    (``actor``), all of which must match. Every aggregate with events in the slice
    is written again from its events, up to the version the model holds (so the
    slice's effects are recomputed and the model ends where it was), in one atomic
    step per aggregate guarded by the stored version: safe while the projector
    writes the same aggregates. Transient store errors are retried with backoff; an
    aggregate that still fails is left exactly as it was and reported in ``failed``
    (under its first sequence in the slice).

    A slice that cannot select anything raises :class:`UsageError`; a story with no
    events raises :class:`AdminError`; a slice that holds no event the model has
    applied (a range past its checkpoint) returns a report of 0 events (the CLI
    refuses it) and records no run. The run is identified by ``run_id`` (a
    new uuid7 unless given) and recorded, with its selectors, events and the last
    replayed stream sequence, as the model's ``last_replay`` in the control entry.

    ``dry_run``: the same checks and the same selection of events, then the report of
    the slice (events, stories, last sequence, corrupt stories under ``failed``) with
    nothing written and no run recorded; what re-applies and what is carried forward
    is known only by folding the stories, so it is not counted.
    """
    started = time.perf_counter()
    validate_slice(p, name, aggregate_id, from_seq, to_seq, from_time, to_time, event_types, actor)
    validate_run_id(run_id)
    control = await (_control_read if dry_run else _control)(p, name)
    if version is None:
        version = control.active
    elif control.versions.get(version) not in (LIVE, BUILDING):
        state = control.versions.get(version, "absent")
        raise AdminError(
            f"{name} v{version} is {state}: only a live or building version is replayed"
        )
    model = p.model(name, version)
    store = p.store_for(name)
    selectors = _selectors(aggregate_id, from_seq, to_seq, from_time, to_time, event_types, actor)
    report = ReplayReport(name, version, run_id or uuid7(), selectors)
    low = from_seq or 1
    if from_time is not None:
        low = max(low, await store.seq_at_time(to_ns(from_time) - 1) + 1)
    checkpoint = await _retry(model.checkpoint, f"replay {name}")
    high = min(to_seq, checkpoint.seq) if to_seq is not None else checkpoint.seq
    if to_time is not None:
        high = min(high, await store.seq_at_time(to_time))
    if aggregate_id is not None and not await store.last_version(aggregate_id):
        raise AdminError(f"{aggregate_id} has no events in {store.settings.stream}")
    events: list[RecordedEvent] = []
    if low >= 1 and high >= low:
        subject = f"{store.settings.subject_prefix}.{aggregate_id}.>" if aggregate_id else None
        if event_types and len(set(event_types)) == 1:
            agg = aggregate_id or "*"
            subject = f"{store.settings.subject_prefix}.{agg}.{next(iter(set(event_types)))}"
        wanted = set(event_types or ())
        # A story holding a corrupt event cannot be folded: it is listed under
        # ``failed`` (at the corrupt sequence) and the scan goes on past it, so
        # every other story of the slice is replayed.
        corrupt: dict[str, CorruptEventError] = {}
        at = low
        while at <= high:
            try:
                async for e in store.read_all(at, high, subject):
                    honour_cancel()
                    at = e.stream_seq + 1
                    if e.aggregate_id in corrupt:
                        continue
                    if wanted and e.event_type not in wanted:
                        continue
                    if actor is not None and e.envelope.metadata.get("actor") != actor:
                        continue
                    events.append(e)
                break
            except CorruptEventError as exc:
                corrupt.setdefault(exc.aggregate_id, exc)
                at = exc.stream_seq + 1
        events = [e for e in events if e.aggregate_id not in corrupt]
        for agg, bad in corrupt.items():
            report.failed[bad.stream_seq] = f"{agg}: not replayed, left as it was: {bad}"
    report.checkpoint = checkpoint.seq
    if not events and not report.failed:  # nothing to do, and no run to record
        report.seconds = time.perf_counter() - started
        return report
    report.events = len(events)
    report.last_seq = events[-1].stream_seq if events else 0
    slices: dict[str, list[RecordedEvent]] = {}
    for e in events:
        slices.setdefault(e.aggregate_id, []).append(e)
    report.aggregates = len(slices)
    if dry_run:
        report.seconds = time.perf_counter() - started
        return report
    entry: dict[str, Any] = {
        "run_id": report.run_id,
        "model": name,
        "version": version,
        "selectors": selectors,
        "events": report.events,
        "aggregates": report.aggregates,
        "first_seq": events[0].stream_seq if events else None,
        "last_seq": report.last_seq,
        "started_at": _stamp(),
        "finished_at": None,
        "state": "running",
    }
    await _record_replay(p, name, entry)
    fence = _version_fence(p, name, version, version in control.versions)
    try:
        await _replay_slices(p, name, model, slices, report, progress, len(events), fence)
    except (Exception, asyncio.CancelledError):
        # Stopped midway (Ctrl-C, NATS lost): the run is recorded as stopped, not left
        # `running` for good. Each story is one atomic step: those written are whole,
        # the others as they were, so the same replay run again is safe.
        entry.update(
            finished_at=_stamp(),
            state="stopped",
            reapplied=report.reapplied,
            failed=len(report.failed),
            seconds=round(time.perf_counter() - started, 3),
        )
        try:
            await wait_for(_record_replay(p, name, entry), 3.0)
        except (Exception, asyncio.CancelledError) as exc:
            log.warning("replay %s: run %s not recorded: %r", name, report.run_id, exc)
        raise
    report.seconds = time.perf_counter() - started
    entry.update(
        finished_at=_stamp(),
        state="failed" if report.failed else "done",
        reapplied=report.reapplied,
        failed=len(report.failed),
        seconds=round(report.seconds, 3),
    )
    await _record_replay(p, name, entry)
    return report


async def _replay_slices(
    p: Projection,
    name: str,
    model: ReadModel,
    slices: dict[str, list[RecordedEvent]],
    report: ReplayReport,
    progress: Progress,
    total: int,
    fence: Fence | None = None,
) -> None:
    """Each story of the slice written again (one atomic step each), into ``report``;
    stopped (:class:`_VersionFenced`) once the version is being dropped or reset."""
    token = _REPLAY_FENCE.set(fence)  # this run's, for its writes only
    try:
        await _replay_each(p, name, model, slices, report, progress, total)
    finally:
        _REPLAY_FENCE.reset(token)


async def _replay_each(
    p: Projection,
    name: str,
    model: ReadModel,
    slices: dict[str, list[RecordedEvent]],
    report: ReplayReport,
    progress: Progress,
    total: int,
) -> None:
    done = 0
    for agg, evs in slices.items():
        # A Ctrl-C that a library below swallowed (a store client that turns the
        # cancellation into a connection error, retried as transient) stops here:
        # the replay ran on to the end and exited 0.
        honour_cancel()
        try:
            was, written = await _replay_aggregate(p, model, agg)
        except _VersionFenced:
            raise  # no story of it is written any more: the run stops here
        except Exception as exc:  # this aggregate's write did not happen: go on
            log.warning("replay %s %s failed: %s", name, agg, exc)
            why = (
                str(exc)  # the model's own words (e.g. which rebuild puts it right)
                if isinstance(exc, (NotImplementedError, ValueError)) and str(exc)
                else repr(exc)
            )
            report.failed[evs[0].stream_seq] = f"{agg}: not replayed, left as it was: {why}"
        else:
            report.reapplied += sum(1 for e in evs if e.version <= written)
            report.carried_forward += max(0, written - evs[-1].version)
            report.advanced += max(0, written - was)
        done += len(evs)
        progress(done, total)


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
    p: Projection, name: str, to_version: int, progress: Progress = _quiet, workers: int = 1
) -> RebuildReport:
    """Build ``to_version`` side by side from the model's replay_start, catch up with
    live traffic, then hand it to the projector service (state ``live``). Resumes
    where it stopped if run again. Progress (done/total, rate, ETA) is kept in the
    control entry while it builds, for `projector status`. With ``workers`` K > 1, K
    processes build the stream's partitions in parallel (partitions_build), under the
    one claim this run holds. A version another run is building (its claim renewed
    within CLAIM_STALE_S) is refused with :class:`Busy`."""
    started = time.perf_counter()
    if workers < 1:
        raise AdminError(f"workers must be at least 1, got {workers}")
    control = await _control(p, name)
    if p.pinned_version(name) is not None:
        raise AdminError(
            f"{name} follows a schema version (v{p.pinned_version(name)}), not a cutover: "
            f"use `jetsource projector reset {name} --yes` to build it again"
        )
    p.spec(name, to_version)
    if control.versions.get(to_version) == LIVE:
        store = p.store_for(name)
        info = await jsapi.consumer_info(
            store._replies,
            store.settings.stream,
            p.spec(name, to_version).durable,
            store.settings.request_timeout_s,
        )
        if info is None:  # `status` says "not started"; it said "already built and live"
            raise AdminError(
                f"{name} v{to_version} is not started: no projector has run it yet (nothing "
                f"is built). The projector service builds it when it starts; to build it "
                f"here, run `jetsource projector reset {name} --yes`"
                + ("" if to_version == control.active else " once it is the active version")
            )

    def begin(control: ModelControl) -> None:
        state = control.versions.get(to_version)
        if state == DROPPED:
            raise AdminError(
                f"{name} v{to_version} is being dropped; run `jetsource projector drop --model "
                f"{name} --version {to_version}` again to finish, then rebuild"
            )
        if state == RESETTING:
            raise AdminError(
                f"{name} v{to_version} is being reset; run `jetsource projector reset {name} "
                "--yes` again to finish"
            )
        if state == LIVE:
            raise AdminError(
                f"{name} v{to_version} is already built and live"
                + (" and active" if control.active == to_version else "; cut over to it or drop it")
            )
        control.versions[to_version] = BUILDING

    # One build of a version at a time: a second one shared the first's consumer and
    # both ended with false reports. A build that stopped (its heartbeat is stale) is
    # taken over and resumed.
    lease = Lease(p, name, to_version, "rebuild")
    try:
        await lease.take(begin)
    except Busy as exc:
        if exc.claim.get("op") == "drop":
            # A drop holds it (marked dropped with its claim): "being built ... wait
            # for it" sent the operator to a wait that says it will never be live.
            raise Busy(
                f"{name} v{to_version} is being dropped by another run "
                f"({describe_claim(exc.claim)}); rebuild it once that drop has finished",
                exc.claim,
            ) from None
        if exc.claim.get("op") == "reset":
            raise _reset_busy(name, to_version, exc.claim, by="rebuild") from None
        raise Busy(
            f"{name} v{to_version} is being built by another run ({describe_claim(exc.claim)}): "
            f"wait for it (`jetsource projector wait {name} --version {to_version}`); if that "
            f"run is gone, running this again {taken_over_when(exc.claim)} resumes its build",
            exc.claim,
        ) from None
    try:
        if workers > 1:
            return await _build_parallel(p, name, to_version, workers, progress, started, lease)
        async with kept_while():  # (each build worker keeps its own)
            return await _build(p, name, to_version, progress, started, lease)
    finally:
        await lease.release()


async def _build_parallel(
    p: Projection,
    name: str,
    version: int,
    workers: int,
    progress: Progress,
    started: float,
    lease: Lease | None = None,
) -> RebuildReport:
    """K processes over N partitions (the service's count, else K) until caught up;
    then the version's consumers are handed to the service and it goes live."""
    from jetsource.projection import partitions_build as pb

    count = p.settings.projector.partitions.count or workers
    model = p.model(name, version)
    await model.setup()
    await pb.ensure_partitions(p, name, count)
    children = await pb.start_children(p, name, version, count, workers)
    outputs: list[tuple[int, bytes, bytes]] = []
    waits = [asyncio.create_task(c.process.communicate()) for c in children]
    # Kept in the control entry as a one-worker build keeps it: `status` showed a
    # parallel build as `building`, checkpoint 0, no progress, until it went live.
    meter = Meter()
    saved = -float("inf")
    try:
        while not all(w.done() for w in waits):
            honour_cancel()
            total = await _stream_last_seq(p, name)
            left = await _retry(lambda: pb.pending(p, name, version, count), "progress")
            meter.update(max(total - left, 0), total)
            progress(meter.done, total)
            if time.monotonic() - saved >= PROGRESS_SAVE_S:
                saved = time.monotonic()
                await _save_progress(p, name, version, meter)
            await asyncio.wait(waits, timeout=0.5)
            _still_building(name, version, await _control(p, name), lease)
        for c, w in zip(children, waits, strict=True):
            out, err = w.result()
            outputs.append((c.process.returncode or 0, out, err))
    finally:
        stopped = False
        for c in children:
            if c.process.returncode is None:
                c.process.kill()
                stopped = True
        await asyncio.gather(*waits, return_exceptions=True)
        if stopped:
            await _keep_progress(p, name, version, meter)
    for _, out, _ in outputs:
        log.info("%s v%d: build worker %s", name, version, out.decode().strip()[-300:])
    failed = [
        pb.failure(c, rc, err) for c, (rc, _, err) in zip(children, outputs, strict=True) if rc != 0
    ]
    if failed:
        raise AdminError(f"{name} v{version}: {failed[0]}")
    applied = sum(
        json.loads(out.decode().strip().splitlines()[-1])["applied"] for _, out, _ in outputs
    )
    await pb.hand_over(p, name, version, count)
    total = await _stream_last_seq(p, name)
    progress(total, total)

    def go_live(c: ModelControl) -> None:
        _still_building(name, version, c, lease)
        c.versions[version] = LIVE
        c.progress.pop(version, None)
        if lease is not None:
            c.claims.pop(version, None)

    await _save(p, name, go_live)
    checkpoint = await model.checkpoint()
    return RebuildReport(name, version, applied, checkpoint.seq, time.perf_counter() - started)


async def _save_progress(p: Projection, name: str, version: int, meter: Meter | None) -> None:
    """The build progress of ``version`` in the control entry (None: remove it); a
    failure is logged, never fatal to the build. Only while the version is being built
    (a drop that took it has removed its progress: nothing is written back)."""

    def put(c: ModelControl) -> None:
        if meter is None:
            c.progress.pop(version, None)
        elif c.versions.get(version) == BUILDING:
            c.progress[version] = {**meter.snapshot(), "updated_at": _stamp()}

    try:
        await _save(p, name, put)
    except Exception as exc:
        log.warning("%s v%d: progress not saved: %r", name, version, exc)


async def _keep_progress(p: Projection, name: str, version: int, meter: Meter) -> None:
    """Where a build that stops midway (Ctrl-C, a failure, a drop) got to, for `status`:
    the last saved progress could be up to PROGRESS_SAVE_S old (0% for a build stopped
    within its first seconds, though thousands of events were applied). Bounded: the
    stop must not hang on a NATS that went away."""
    try:
        await wait_for(_save_progress(p, name, version, meter), 3.0)
    except (Exception, asyncio.CancelledError) as exc:
        log.warning("%s v%d: progress not saved: %r", name, version, exc)


async def _from_archive(p: Projection, name: str, model: ReadModel) -> None:
    """On a compacted stream a build starts with what only the archive still holds
    (merged in stream order with the live events among it); the worker goes on from
    the live stream.

    Fenced as the live phase's worker is (its DropFence, the same cache): before each
    batch and letter, the version's state; once a drop or reset has marked it (or a
    drop of it has ended) nothing more is written and the build stops saying so, as
    it does when the drop comes during the live phase. Unfenced, a drop during this
    phase was followed by the archive's next batches written into the namespace the
    drop emptied (keys left, the version gone from the entry)."""
    store = p.store_for(name)
    archive = p.archive_of(store) if p.settings.archive.read else None
    if archive is None:
        return
    from jetsource.archive.replay import ReplayFenced, replay_archive

    version = model.spec.version
    seen: list[ModelControl] = []  # the entry as fenced() last read it

    async def fenced() -> bool:
        bucket = p.settings.projector.control_bucket
        if not await version_dropped(p.nc, bucket, name, version, gone_too=True):
            return False
        # Confirmed on a fresh read: the cached answer may be from before this build
        # (a drop of the version just before it was built again).
        seen[:] = [await _control(p, name)]
        return seen[0].versions.get(version) != BUILDING

    if await fenced():
        # Said from the read that fenced it, never from a second one: that read could
        # show the version building again, another run's build of it, and this run
        # went on into setup and the archive phase of a build it no longer held.
        _still_building(name, version, seen[0], None)
        raise AdminError(f"{name} v{version} was dropped while it was being built")
    await model.setup()

    async def letter(raw: jsapi.RawMessage, aggregate_id: str, reason: str) -> None:
        # An archived event a newer release wrote: filed as the live path files it
        # (once: not again on a second replay); the build's worker parks its story
        # (letters listed).
        if not await p.dead_letters.filed(model.spec, aggregate_id, raw.seq):
            await p.dead_letters.publish(model.spec, aggregate_id, raw, reason, 1)

    control = await p.control.get(name)
    discarded = set(control.discarded) if control is not None else set()
    try:
        applied = await replay_archive(store, archive, model, letter, discarded, fenced)
    except ReplayFenced as exc:
        stopped: ReplayFenced | None = exc
    except Exception:
        # The fence is asked before each batch, not with it: a drop's truncation that
        # lands inside a batch fails that batch's write on the store (a raw
        # "...:born is gone or another one"). Said as the fence says it once the
        # version is no longer this build's; otherwise the error stands.
        await _raise_unless_building(p, name, version)
        raise
    else:
        stopped = None
    if stopped is not None:
        log.warning("%s", stopped)
        # The state as the live phase says it ("was dropped while it was being built").
        _still_building(name, version, await _control(p, name), None)
        raise AdminError(str(stopped))
    log.info("%s v%d: %d events applied from the archive", name, version, applied)


async def _raise_unless_building(p: Projection, name: str, version: int) -> None:
    """:func:`_still_building` on a fresh read of the entry; nothing when the entry
    does not read (the caller's own error stands)."""
    try:
        control = await _control(p, name)
    except Exception:
        return
    _still_building(name, version, control, None)


def _still_building(name: str, version: int, c: ModelControl, lease: Lease | None) -> None:
    """Raise, saying what happened, unless this run still builds ``version``."""
    state = c.versions.get(version)
    if state in (None, DROPPED):
        raise AdminError(f"{name} v{version} was dropped while it was being built")
    if state != BUILDING:
        raise AdminError(f"{name} v{version} is {state} now: another run finished it")
    held = (c.claims.get(version) or {}) if lease is not None else {}
    if lease is not None and (lease.lost or held.get("owner", lease.owner) != lease.owner):
        raise AdminError(
            f"{name} v{version}: another run took this build over (this run's heartbeat did "
            f"not reach NATS for {CLAIM_STALE_S:g} s); it goes on there"
            + (f" ({describe_claim(held)})" if held else "")
        )


async def _build(
    p: Projection,
    name: str,
    version: int,
    progress: Progress,
    started: float,
    lease: Lease | None = None,
) -> RebuildReport:
    """Run a worker of ``version`` (state ``building``) until it has caught up, then
    mark it ``live``. Stops at once if the version stops being ``building``."""
    model = p.model(name, version)
    # Short pull requests: when the build has caught up, its puller hands back what
    # open requests still bring (new appends) before the service takes over, and waits
    # for them to expire; with the service's 5 s expiry every build ended 5 s late.
    options = p.settings.projector.model_copy(
        update={"pull_expires_s": min(p.settings.projector.pull_expires_s, BUILD_PULL_EXPIRES_S)}
    )
    await _from_archive(p, name, model)
    worker = Worker(p.nc, p.store_for(name), model, p.dead_letters, options)
    # The checkpoint first: a store that does not answer fails the build here, with
    # no worker started (one started before was left failing on its own, and asyncio
    # printed "Task exception was never retrieved" after the command's error line).
    meter = Meter((await _retry(model.checkpoint, f"build {name} v{version}")).seq)
    task = asyncio.create_task(worker.run(until_caught_up=True))
    saved = -float("inf")
    try:
        while not task.done():
            honour_cancel()  # a Ctrl-C swallowed below must still stop the build
            total = await _stream_last_seq(p, name)
            done = min(max(worker.stats.last_seq, meter.start), total)
            meter.update(done, total)
            progress(done, total)
            if time.monotonic() - saved >= PROGRESS_SAVE_S:
                saved = time.monotonic()
                await _save_progress(p, name, version, meter)
            await asyncio.wait([task], timeout=0.5)
            try:
                _still_building(name, version, await _control(p, name), lease)
            except AdminError:
                # `drop` took it (state dropped, or gone), or another run did: stop
                # writing at once.
                worker.stop()
                await asyncio.wait([task], timeout=p.settings.projector.shutdown_grace_s)
                raise
        await task
    finally:
        if not task.done():
            worker.stop()
            await asyncio.wait([task], timeout=p.settings.projector.shutdown_grace_s)
            if meter.total:
                meter.update(min(max(worker.stats.last_seq, meter.done), meter.total), meter.total)
            await _keep_progress(p, name, version, meter)
    total = await _stream_last_seq(p, name)
    progress(total, total)

    def go_live(c: ModelControl) -> None:
        _still_building(name, version, c, lease)
        c.versions[version] = LIVE
        c.progress.pop(version, None)
        if lease is not None:
            c.claims.pop(version, None)

    await _save(p, name, go_live)
    checkpoint = await model.checkpoint()
    return RebuildReport(
        name, version, worker.stats.applied, checkpoint.seq, time.perf_counter() - started
    )


def _resettable(name: str, version: int, state: str | None) -> None:
    """AdminError unless a version in ``state`` can be reset (live, or a reset that
    stopped: resetting, or building again after its truncation)."""
    if state == DROPPED:
        raise AdminError(f"{name} v{version} is being dropped")
    if state not in (LIVE, RESETTING, BUILDING):
        raise AdminError(f"{name} v{version} is {state or 'absent'}; nothing to reset")


async def reset_plan(p: Projection, name: str) -> dict[str, Any]:
    """The reset's checks, nothing written and no lease taken (``projector reset
    --dry-run``): the active version it would empty and rebuild, its state, and its
    checkpoint now; how many events the rebuild applies is known only by doing it."""
    control = await _control_read(p, name)
    version = control.active
    _refuse_pinned_reset(p, name)
    # The lease as the reset's take finds it (another run's fresh claim first), read
    # only: nothing acquired.
    held = Lease(p, name, version, "reset").held_by_other(control)
    if held is not None:
        raise _reset_busy(name, version, held)
    state = control.versions.get(version)
    _resettable(name, version, state)
    checkpoint = await _retry(p.model(name, version).checkpoint, f"reset {name}")
    return {"model": name, "version": version, "state": state, "checkpoint": checkpoint.seq}


def _refuse_pinned_reset(p: Projection, name: str) -> None:
    """AdminError when ``name`` follows a schema (a pinned version, run by its own
    service): the reset and its dry run alike refuse it."""
    pinned = p.pinned_version(name)
    if pinned is not None:
        raise AdminError(
            f"{name} v{pinned} follows a schema and is run by its own service; it cannot be "
            "reset from here"
        )


def _reset_busy(name: str, version: int, claim: dict[str, Any], by: str = "reset") -> Busy:
    # What the holder does, as its claim says (a rebuild resuming a stopped reset's
    # build holds the active version too: "being reset" named the wrong command).
    doing = {"rebuild": "built", "drop": "dropped"}.get(str(claim.get("op")), "reset")
    # A rebuild (``by``) refused by a reset's claim: the reset is what finishes it
    # ("running this again" sent the operator to run the rebuild again).
    if doing == "reset" and by != "reset":
        again = f"`jetsource projector reset {name} --yes`"
    elif doing == "dropped":  # only a drop finishes a drop (it said "running this again")
        again = f"`jetsource projector drop {name} --version {version}`"
    else:
        again = "running this again"
    return Busy(
        f"{name} v{version} is being {doing} by another run ({describe_claim(claim)}); "
        f"if that run is gone, {again} {taken_over_when(claim)} finishes it",
        claim,
    )


async def reset(
    p: Projection,
    name: str,
    progress: Progress = _quiet,
    settle_s: float | None = None,
    verify_s: float = 1.0,
) -> RebuildReport:
    """Truncate the active version of ``name`` in place and build it again from the
    model's replay_start (the contract's in-place reset; readers see it empty, then
    growing).

    Fenced like ``drop``: the version is first marked ``resetting`` in the control
    entry, so a worker of it (the projector service's) stops before its next batch
    and the service stops running it; after ``settle_s`` (default: a control poll
    and a second) the consumer and the namespace are deleted (and checked again
    ``verify_s`` later); then the version is marked ``building``, built by a worker
    of this process until it has caught up, and marked ``live`` again, so the
    projector service resumes it from there. Run again after an interruption, it
    finishes what was started."""
    started = time.perf_counter()
    control = await _control(p, name)
    version = control.active
    _refuse_pinned_reset(p, name)

    def mark(c: ModelControl) -> None:
        if c.active != version:
            raise AdminError(f"{name}: the active version changed meanwhile; try again")
        state = c.versions.get(version)
        _resettable(name, version, state)
        if state == BUILDING:  # a reset interrupted after the truncation: build on
            return
        c.versions[version] = RESETTING
        c.progress[version] = {"phase": "truncating", "updated_at": _stamp()}

    # One reset of a version at a time (a second one truncated under the first's
    # build); one that stopped is taken over and finished.
    lease = Lease(p, name, version, "reset")
    try:
        control = await lease.take(mark)
    except Busy as exc:
        raise _reset_busy(name, version, exc.claim) from None
    try:
        if control.versions.get(version) == RESETTING:
            if settle_s is None:
                settle_s = p.settings.projector.control_poll_s + 1.0
            await asyncio.sleep(settle_s)
            await _truncate(p, name, version, verify_s)

            def building(c: ModelControl) -> None:
                state = c.versions.get(version)
                if state in (None, DROPPED):  # cut over from and dropped meanwhile
                    raise AdminError(
                        f"{name} v{version} was dropped by another run while it was reset "
                        f"(the active version is v{c.active} now): nothing to build"
                    )
                if state != RESETTING:
                    raise AdminError(f"{name} v{version} changed state while it was truncated")
                c.versions[version] = BUILDING

            await _save(p, name, building)
        return await _build(p, name, version, progress, started, lease)
    finally:
        await lease.release()


async def _truncate(p: Projection, name: str, version: int, verify_s: float) -> int:
    """Delete a fenced version's consumer and namespace, and check again ``verify_s``
    later (deleting again what a late write brought back). Returns what was removed."""
    spec = p.spec(name, version)
    model = p.model(name, version)
    removed = 0
    for _ in range(5):
        store = p.store_for(name)
        await jsapi.delete_consumer(
            store._replies, store.settings.stream, spec.durable, store.settings.request_timeout_s
        )
        # And its consumers on the partition mirrors (a partitioned service, --workers).
        from jetsource.projection.partitions_build import delete_partition_consumers

        await delete_partition_consumers(p, name, version)
        removed += await _retry(model.drop, f"truncate {name} v{version}")
        # Its dead letters go with its data: the next build of this version (a reset's,
        # or a rebuild after a drop) would park their stories from the first event.
        letters = await _retry(lambda: _clear_letters(p, spec), f"truncate {name} v{version}")
        if letters:
            log.info("%s v%d: %d dead letters removed", name, version, letters)
        await asyncio.sleep(verify_s)
        consumer, keys = await _leftovers(p, name, version)
        if not consumer and keys == 0:
            return removed
        log.warning(
            "%s v%d: %s came back; deleting again",
            name,
            version,
            "the consumer" if consumer else f"{keys} keys",
        )
    raise AdminError(
        f"{name} v{version} keeps being written (is a rebuild of it still running?); "
        "stop it and run the command again"
    )


async def cutover(
    p: Projection, name: str, version: int, drop_old: bool = False, max_lag: int = 1000
) -> dict[str, Any]:
    """Make ``version`` the one queries read: one compare-and-set of the control entry.
    With ``drop_old``, run again after a run stopped in its drop (Ctrl-C, killed: the
    cut over made, the old version marked ``dropped``), it finishes that drop; it was
    refused as "already the active version" and the old version was left half dropped."""
    control = await _control(p, name)
    if control.active == version:
        left = sorted(v for v, state in control.versions.items() if state == DROPPED)
        if drop_old and left:
            removed = 0
            for old in left:
                # Seen in the entry: gone by its claim, another drop finished it (0).
                removed += await _drop_seen(p, name, old)
            spec = p.spec(name, version)
            store = p.store_for(name)
            info = await jsapi.consumer_info(
                store._replies,
                store.settings.stream,
                spec.durable,
                store.settings.request_timeout_s,
            )
            lag = 0 if info is None else int(info["num_pending"]) + int(info["num_ack_pending"])
            letters = await _retry(lambda: p.dead_letters.count(spec), f"cutover {name}")
            return {
                "model": name,
                "active": version,
                "previous": left[-1],
                "lag": lag,
                "dead_letters": letters,
                "dropped": removed,
            }
        raise AdminError(f"{name} v{version} is already the active version; nothing to cut over")
    if control.versions.get(version) != LIVE:
        raise AdminError(
            f"{name} v{version} is not built (state: {control.versions.get(version, 'absent')}); "
            f"run `jetsource projector rebuild --model {name} --to-version {version}` first"
        )
    spec = p.spec(name, version)
    store = p.store_for(name)
    info = await jsapi.consumer_info(
        store._replies, store.settings.stream, spec.durable, store.settings.request_timeout_s
    )
    if info is None:  # it said "-1 events behind"
        raise AdminError(
            f"{name} v{version} has no consumer on {store.settings.stream}: no projector "
            "has run it yet; start the projector service (or rebuild it to a new "
            "version) and cut over once it has caught up"
        )
    lag = int(info["num_pending"]) + int(info["num_ack_pending"])
    if lag > max_lag:
        raise AdminError(
            f"{name} v{version} is {lag} events behind (limit {max_lag}); is the projector running?"
        )
    # Dead letters are not a refusal (the operator may cut over on purpose), but they
    # are said: the stories parked in this version are behind in what queries now read
    # (a cutover to a version holding them was silent).
    letters = await _retry(lambda: p.dead_letters.count(spec), f"cutover {name}")
    old = control.active

    class _CutOverMeanwhile(Exception):
        pass

    def switch(c: ModelControl) -> None:
        # Decided on the entry as it is at the write, not as it was read above: any
        # other run's write meanwhile (a build's heartbeat or progress, a drop's mark)
        # failed the compare-and-set with "changed meanwhile; try again", and a
        # version marked dropped or resetting since must not become the active one.
        if c.active == version:
            raise _CutOverMeanwhile
        if c.active != old:  # --drop-old would drop one the operator never saw active
            raise AdminError(
                f"{name}: the active version changed meanwhile (v{old} when looked at, "
                f"v{c.active} now: another cutover); nothing was cut over, try again"
            )
        if c.versions.get(version) != LIVE:
            raise AdminError(
                f"{name} v{version} is {c.versions.get(version, 'absent')} now (another run "
                "changed it meanwhile); nothing was cut over"
            )
        c.active = version

    try:
        await _save(p, name, switch)
    except _CutOverMeanwhile:  # another cutover to it won: answered as run after it
        return await cutover(p, name, version, drop_old, max_lag)
    result: dict[str, Any] = {"model": name, "active": version, "previous": old, "lag": lag}
    result["dead_letters"] = letters
    if letters:
        log.warning(
            "%s v%d holds %d dead letters: the stories parked there stop at them in what "
            "queries now read; see `jetsource projector dlq list --model %s`",
            name,
            version,
            letters,
            name,
        )
    if drop_old and old != version:
        result["dropped"] = await _drop_seen(p, name, old)
    return result


async def _clear_letters(p: Projection, spec: Any) -> int:
    """Every dead letter of one model version deleted (DeadLetters.clear), one removed
    meanwhile by another run (a dlq retry or discard of it, the other of a reset and a
    drop of the version) passed over: it failed the drop half-way with JsApiError 10057
    "no message found". Returns how many this run deleted."""
    removed = 0
    for letter in await p.dead_letters.list(spec):
        removed += await _delete_letter(p, letter.dlq_seq)
    return removed


async def _leftovers(p: Projection, name: str, version: int) -> tuple[bool, int]:
    """(the version's consumer exists, how many keys/nodes its namespace holds)."""
    spec = p.spec(name, version)
    store = p.store_for(name)
    info = await jsapi.consumer_info(
        store._replies, store.settings.stream, spec.durable, store.settings.request_timeout_s
    )
    return info is not None, await _retry(lambda: _count(p.model(name, version)), "drop")


async def _count(model: ReadModel) -> int:
    """How many keys/nodes a model version holds, where its store can tell."""
    size = getattr(model, "size", None)
    return int(await size()) if size is not None else 0


async def drop_plan(p: Projection, name: str, version: int) -> str:
    """The drop's own checks, nothing written (``projector drop --dry-run``): the
    state of the version a drop would delete, or the AdminError the drop raises (the
    active version, a version never built or dropped already). How many keys/nodes
    go is known only by deleting them."""
    control = await _control_read(p, name)
    if control.active == version:
        raise AdminError(f"{name} v{version} is active; cut over to another version first")
    p.spec(name, version)
    if version not in control.versions:
        # Never built, or dropped already: nothing to drop, and no marker to leave
        # (a 'dropped' marker made `wait` say the version would never be live).
        known = ", ".join(f"v{v} {state}" for v, state in sorted(control.versions.items()))
        raise AdminError(
            f"{name} v{version} was never built (or is dropped already): nothing to drop "
            f"({name} has {known or f'v{control.active} active'})"
        )
    return control.versions[version]


async def drop(
    p: Projection,
    name: str,
    version: int,
    settle_s: float | None = None,
    verify_s: float = 1.0,
) -> int:
    """Delete a model version that queries no longer read: consumer and namespace.

    Fenced against a live worker of that version: the version is first marked
    ``dropped`` in the control entry (a worker asks before each batch and stops;
    the projector service stops running it within a control poll), then, after
    ``settle_s`` (default: a control poll and a second), the consumer goes, then the
    keys, and both are checked again ``verify_s`` later, deleted again if a late
    write brought something back. The control entry loses the version last, so a
    drop that fails half-way is finished by running it again. Returns how many
    keys/nodes were removed: 0 from a drop that met another one of the version
    running (it waits for that one to finish; every key is counted once)."""
    await drop_plan(p, name, version)
    return await _drop_seen(p, name, version, settle_s, verify_s)


async def _drop_seen(
    p: Projection,
    name: str,
    version: int,
    settle_s: float | None = None,
    verify_s: float = 1.0,
) -> int:
    """:func:`drop` of a version its caller saw in the control entry. Only a drop
    removes a version from the entry, so one gone by the time this run claims it was
    finished by another drop of it, which counted its keys: 0, not "dropped already"
    (a drop whose look at the entry came just before another drop ended said that)."""

    class _FinishedByAnother(Exception):
        pass

    def mark(c: ModelControl) -> None:
        if c.active == version:
            raise AdminError(f"{name} v{version} is active; cut over to another version first")
        if version not in c.versions:  # another drop ended between our look and claim
            raise _FinishedByAnother
        c.versions[version] = DROPPED

    # A drop fences a build of the version (it takes the build's claim); a second drop
    # of it waits for the first and removes nothing (both counted every key once each).
    lease = Lease(p, name, version, "drop")
    while True:
        try:
            await lease.take(mark, over=frozenset({"rebuild", "reset"}))
            break
        except _FinishedByAnother:
            return 0
        except Busy:
            await asyncio.sleep(0.2)
            if version not in (await _control(p, name)).versions:
                return 0  # the other drop finished it
    try:
        if settle_s is None:
            settle_s = p.settings.projector.control_poll_s + 1.0
        await asyncio.sleep(settle_s)
        removed = await _truncate(p, name, version, verify_s)

        def forget(c: ModelControl) -> None:
            c.versions.pop(version, None)
            c.progress.pop(version, None)
            c.claims.pop(version, None)

        await _save(p, name, forget)
        return removed
    finally:
        await lease.release()


# -- wait ----------------------------------------------------------------------------


async def unacknowledged(p: Projection, name: str, version: int) -> int | None:
    """Events the version's consumer has not acknowledged yet (None: no consumer)."""
    store = p.store_for(name)
    info = await jsapi.consumer_info(
        store._replies,
        store.settings.stream,
        p.spec(name, version).durable,
        store.settings.request_timeout_s,
    )
    if info is None:
        return None
    return int(info["num_pending"]) + int(info["num_ack_pending"])


async def wait(
    p: Projection,
    name: str,
    version: int,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Wait until ``version`` of ``name`` is live and caught up (its consumer exists
    and has nothing pending or unacknowledged). Raises :class:`WaitTimeout` after
    ``timeout_s`` (None: wait for good), :class:`AdminError` at once if the version
    is being dropped or does not exist (nothing would ever make it live: start its
    rebuild first); v1 of a model the service has not started yet is waited for."""
    p.spec(name, version)
    started = time.monotonic()
    pinned = p.pinned_version(name)
    state: str | None = None
    lag: int | None = None
    while True:
        if pinned is not None:
            if version != pinned:
                raise AdminError(f"{name} follows a schema version: only v{pinned} exists")
            state = LIVE
        else:
            control = await p.control.get(name)
            state = control.versions.get(version) if control else None
            if state == DROPPED:
                raise AdminError(f"{name} v{version} is being dropped; it will never be live")
            if (
                control is not None
                and state in (BUILDING, RESETTING)
                and not claim_fresh(control.claims.get(version))
            ):
                # `status` says stopped: nothing would make it live, and wait waited out
                # its --timeout (exit 3) saying "state building".
                command = (
                    f"reset {name} --yes"
                    if state == RESETTING
                    else f"rebuild {name} --to-version {version}"
                )
                raise AdminError(
                    f"{name} v{version} is stopped: {state}, but no run holds it (the last "
                    f"one stopped: Ctrl-C, killed); run `jetsource projector {command}` "
                    "again to resume it, then wait"
                )
            if state is None and (control is not None or version != 1):
                # Nothing builds it (v1 of a model not started yet: the service makes it).
                known = (
                    ", ".join(f"v{v} {st}" for v, st in sorted(control.versions.items()))
                    if control is not None
                    else "none"
                )
                raise AdminError(
                    f"{name} v{version} does not exist (versions: {known}): nothing to wait "
                    f"for; build it first (`jetsource projector rebuild {name} --to-version "
                    f"{version}`)"
                )
        lag = await unacknowledged(p, name, version) if state == LIVE else None
        waited = time.monotonic() - started
        if state == LIVE and lag == 0:
            checkpoint = (await p.model(name, version).checkpoint()).seq
            if pinned is None:
                # Still live once its consumer was read: a drop or reset that marked it
                # after the look above (its consumer not deleted yet, nothing pending)
                # was answered "live and caught up"; looked at again, it is said as such.
                again = await p.control.get(name)
                if (again.versions.get(version) if again else None) != LIVE:
                    continue
            return {
                "model": name,
                "version": version,
                "state": state,
                "lag": 0,
                "checkpoint": checkpoint,
                "waited_s": round(waited, 3),
            }
        if timeout_s is not None and waited >= timeout_s:
            raise WaitTimeout(
                f"{name} v{version} is not live and caught up after {timeout_s:g} s "
                f"(state {state or 'absent'}, lag {'-' if lag is None else lag})"
            )
        delay = poll_s if timeout_s is None else max(0.0, min(poll_s, timeout_s - waited))
        await asyncio.sleep(delay)


# -- dead letters -------------------------------------------------------------------


async def dlq_list(
    p: Projection, name: str | None = None, aggregate_id: str | None = None
) -> list[DeadLetter]:
    validate_aggregate(aggregate_id)
    out = []
    names = [name] if name else p.model_names()
    for n in names:
        control = await p.control.get(n)
        versions = sorted(control.versions) if control else [1]
        for v in versions:
            out += await p.dead_letters.list(p.spec(n, v), aggregate_id or ">")
    # Oldest first: by the event's stream sequence, then when it was filed.
    return sorted(out, key=lambda d: (d.original_seq, d.time_ns, d.dlq_seq))


async def _letter_fenced(p: Projection, letter: DeadLetter) -> str | None:
    """Why a dead letter's version must not be written now, or None: ``drop`` or
    ``reset`` marked it (or a drop removed it) since the letter was listed. Asked right
    before the letter's write: a retry or discard that met a drop wrote its story into
    the namespace the drop was deleting (left there, the version gone from the entry).
    A model with no entry (listed as v1) is not fenced."""
    try:
        control = await p.control.get(letter.model)
    except Exception as exc:  # NATS away: not fenced (as a worker's DropFence)
        log.warning("%s v%d: version state not read: %r", letter.model, letter.version, exc)
        return None
    if control is None:
        return None
    state = control.versions.get(letter.version)
    if state in (DROPPED, RESETTING) or state is None:
        doing = "being reset" if state == RESETTING else "dropped"
        return f"{letter.model} v{letter.version} is {doing} now (another run): not written"
    return None


async def _delete_letter(p: Projection, dlq_seq: int) -> bool:
    """Remove a dead letter; False when it was gone already (another retry or discard
    of it, or a drop or reset clearing its version, removed it meanwhile): the second
    of two retries at once failed with JsApiError 10057 "no message found", which
    jsapi.delete_message now takes for "gone" as it took 10037."""
    return await p.dead_letters.delete(dlq_seq)


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
    version: int | None = None,
    dry_run: bool = False,
) -> DlqReport:
    """Apply dead letters again, oldest first per aggregate; a success removes the
    entry. A failure stops that aggregate (its later letters stay behind it). Only
    those of one model ``version`` when given. ``dry_run``: the same selection, in the
    order they would be tried, in ``done``; nothing applied or removed (whether each
    applies is known only by applying it)."""
    report = DlqReport()
    if dry_run:
        letters = await _select(p, name, aggregate_id, dlq_seqs)
        report.done = [d.dlq_seq for d in letters if version is None or d.version == version]
        return report
    for _ in range(10):  # the live projector may file more while we work: go again
        letters = await _select(p, name, aggregate_id, dlq_seqs)
        letters = [
            d
            for d in letters
            if d.dlq_seq not in report.failed and (version is None or d.version == version)
        ]
        if not letters:
            break
        stuck: set[tuple[str, int, str]] = set()
        for i, letter in enumerate(letters):
            honour_cancel()
            key = (letter.model, letter.version, letter.aggregate_id)
            if key in stuck:
                report.failed[letter.dlq_seq] = "behind a dead letter that failed again"
                continue
            reason = await _retry_one(p, letter)
            if reason is None:
                # Counted by the run that removes it: two retries at once both applied
                # it (the second finding it applied) and both reported it done.
                if await _delete_letter(p, letter.dlq_seq):
                    report.done.append(letter.dlq_seq)
            else:
                report.failed[letter.dlq_seq] = reason
                stuck.add(key)
            progress(i + 1, len(letters))
        if dlq_seqs:
            break
    return report


async def _letter_event(
    p: Projection, letter: DeadLetter, newer_release: bool = False
) -> RecordedEvent | str:
    """The dead letter's message as an event, or why it is none. An event a newer
    release wrote is none to apply (``newer_release`` False), but has its place in its
    story (True: a discard steps past it there)."""
    store = p.store_for(letter.model)
    raw = await jsapi.direct_get(
        store._replies,
        store.settings.stream,
        {"seq": letter.original_seq},
        store.settings.request_timeout_s,
    )
    if raw is None:
        return f"stream sequence {letter.original_seq} is gone"
    try:
        record = await store.open(raw)
    except Exception as exc:  # undecodable, or an envelope that is not its own
        return f"still undecodable: {exc}"
    if isinstance(record.event, UnknownEvent) and record.event.newer_release and not newer_release:
        # Applied now it would be skipped and its letter gone: the model had lost it.
        return f"still unknown to this release: {record.event.newer_release}; upgrade first"
    return record


async def _its_place(p: Projection, letter: DeadLetter, model: Any) -> RecordedEvent | None:
    """The dead letter's message if it is its story's next version for ``model``: an
    event of that story that decodes (one a newer release wrote too: a no-op at its
    place, as a void), at the version after the model's position; else None. A newer
    release's event gone from the live stream (compacted: a rebuild filed it from the
    archive) is read from the letter itself, which holds its message: it has its place
    all the same (nothing was written for it before, and its story stayed before it)."""
    found = await _letter_event(p, letter, newer_release=True)
    record = await _archived_newer_release(p, letter) if isinstance(found, str) else found
    if record is None:
        return None
    position = await model.position(letter.aggregate_id)
    if record.aggregate_id == letter.aggregate_id and record.version == position + 1:
        return record
    return None


async def _archived_newer_release(p: Projection, letter: DeadLetter) -> RecordedEvent | None:
    """The newer release's event a dead letter holds when its sequence is gone from the
    live stream, read from the letter's own message; None for any other letter."""
    store = p.store_for(letter.model)
    raw = jsapi.RawMessage(
        letter.original_subject, letter.original_seq, letter.time_ns, {}, letter.data
    )
    try:
        record = await store.open(raw)
    except Exception:  # undecodable, or an envelope that is not its own
        return None
    if isinstance(record.event, UnknownEvent) and record.event.newer_release:
        return record
    return None


async def _retry_one(p: Projection, letter: DeadLetter) -> str | None:
    record = await _letter_event(p, letter)
    if isinstance(record, str):
        return record
    model = p.model(letter.model, letter.version)
    fenced = await _letter_fenced(p, letter)
    if fenced is not None:
        return fenced
    outcome = await model.apply([record])
    if record.stream_seq in outcome.done:
        return None
    return outcome.failed.get(record.stream_seq) or outcome.waiting.get(
        record.stream_seq, "not applied"
    )


# Discards remembered in the control entry in one write per this many letters (each
# write carries every sequence discarded so far: one per letter made a run quadratic).
DISCARD_BATCH = 256


async def dlq_discard(
    p: Projection,
    name: str | None = None,
    aggregate_id: str | None = None,
    dlq_seqs: list[int] | None = None,
    dry_run: bool = False,
) -> DlqReport:
    """Give up on dead letters: the model steps its aggregate past each one without
    applying it. Only an aggregate's oldest letter can go (the others wait behind).
    ``dry_run``: the same selection and the same refusals, nothing stepped over,
    remembered or deleted; ``done`` lists the letters that would go."""
    report = DlqReport()
    letters = await _select(p, name, aggregate_id, dlq_seqs)
    # Each story's letters (per model version), oldest first, and the first not gone:
    # the letter one must wait behind, found without looking at every other letter.
    queues: dict[tuple[str, int, str], list[DeadLetter]] = {}
    for d in await dlq_list(p, name, aggregate_id):
        queues.setdefault((d.model, d.version, d.aggregate_id), []).append(d)
    heads: dict[tuple[str, int, str], int] = {}
    gone: set[int] = set()  # stepped over in this run
    stepped: list[DeadLetter] = []  # stepped over, not remembered yet

    async def remember() -> None:
        models: dict[str, list[int]] = {}
        for letter in stepped:
            models.setdefault(letter.model, []).append(letter.original_seq)
        for model, seqs in models.items():

            def add(control: ModelControl, seqs: list[int] = seqs) -> None:
                control.discarded.extend(seqs)

            # Remembered for the model, so every version (a rebuild) steps over them too;
            # then the letters go (a run stopped in between finds them again, with no
            # place left in their stories, and remembers them then).
            await _save(p, model, add)
        for letter in stepped:
            if await _delete_letter(p, letter.dlq_seq):  # (one run counts it)
                report.done.append(letter.dlq_seq)
        stepped.clear()

    for letter in letters:
        key = (letter.model, letter.version, letter.aggregate_id)
        queue, at = queues.get(key, []), heads.get(key, 0)
        while at < len(queue) and queue[at].dlq_seq in gone:
            at += 1
        heads[key] = at
        if at < len(queue) and queue[at].original_seq < letter.original_seq:
            report.failed[letter.dlq_seq] = (
                f"behind dead letter {queue[at].dlq_seq} of the same aggregate; "
                "retry or discard that one first"
            )
            continue
        if dry_run:  # stepped over at its place, or no place: it goes either way
            gone.add(letter.dlq_seq)
            report.done.append(letter.dlq_seq)
            continue
        model = p.model(letter.model, letter.version)
        record = await _its_place(p, letter, model)
        fenced = await _letter_fenced(p, letter)
        if fenced is not None:
            report.failed[letter.dlq_seq] = fenced
            continue
        if record is not None and isinstance(record.event, UnknownEvent):
            # A newer release's event: a no-op at its place, exactly as a rebuild reads
            # it (the runtime steps over a discarded one so; nothing was written before,
            # and the story stayed before it for good).
            done = record.stream_seq in (await model.apply([voided_event(record)])).done
        elif record is not None:
            done = await model.skip(letter.aggregate_id, letter.original_seq)
        else:
            # No place in the story's history (undecodable, another story's, a version
            # again or ahead): nothing is written, as a rebuild steps over it by rule. A
            # stand-in at the next version made the story's real next event look like a
            # second one for that version.
            done = True
        if done:
            gone.add(letter.dlq_seq)
            stepped.append(letter)
            if len(stepped) >= DISCARD_BATCH:
                await remember()
        else:
            report.failed[letter.dlq_seq] = "the model is not right before this event"
    await remember()
    return report
