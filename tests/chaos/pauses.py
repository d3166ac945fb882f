"""Hung dependencies: a server SIGSTOPped (its TCP connections stay open, the kernel
still accepts new ones, nothing answers) for longer than every client timeout that
concerns it, then SIGCONT.

Besides the invariants of every row (checked after the load), a pause row asserts
what an operator's probes would see: each service that needs the paused server says
not ready within ``DOWN_BOUND_S`` of SIGSTOP, the others stay ready, and all are
ready again within ``UP_BOUND_S`` of SIGCONT; and it bounds the time from SIGCONT to
every model at the stream head (``harness._judge_time_to_head``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from jetsource.client import QueryClient
from tests.chaos.harness import Fault, Run, applied
from tests.stack import SERVICES

# Probes run every 2 s (projector control_poll_s, query store_probe_s; the publisher's
# write probe every 10 s while writable, at once when an append fails) with a 2 s
# timeout, behind at most one NATS request (5 s) of the control round: 15 s has margin.
DOWN_BOUND_S = 15.0
UP_BOUND_S = 20.0
POLL_S = 0.5


@dataclass
class HealthLog:
    """When each service was first seen not ready after SIGSTOP, and ready again
    after SIGCONT (seconds, from the signal)."""

    not_ready: dict[str, float] = field(default_factory=dict)
    ready_again: dict[str, float] = field(default_factory=dict)


@dataclass
class Reads:
    """Two readers asking the query service for acknowledged writes
    (``GetContext(min_version=<acked version>)``) through the fault."""

    ok: int = 0
    behind: int = 0  # answered older than the acknowledged version
    failed: Counter[str] = field(default_factory=Counter)
    longest: float = 0.0
    answered_at: list[float] = field(default_factory=list)  # monotonic, answers in time
    resumed: float = float("inf")  # SIGCONT
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # a read after SIGCONT

    def first_after(self, since: float) -> float:
        later = [t for t in self.answered_at if t >= since]
        return min(later) - since if later else -1.0


async def _read(run: Run, stop: asyncio.Event, reads: Reads) -> None:
    async with QueryClient(run.services.address("query"), timeout=CLIENT_DEADLINE_S) as q:
        while not stop.is_set():
            acked = list(run.load.acked.items())[-400:]
            if not acked:
                await asyncio.sleep(0.1)
                continue
            key, version = random.choice(acked)
            started = time.monotonic()
            try:
                r = await q.get_context(key.split(":")[0], min_version=version)
                reads.ok += 1
                reads.behind += int(r.behind)
                reads.answered_at.append(time.monotonic())
                if reads.answered_at[-1] >= reads.resumed:
                    reads.answered.set()
            except grpc.aio.AioRpcError as exc:
                reads.failed[exc.code().name] += 1
                await asyncio.sleep(0.2)
            reads.longest = max(reads.longest, time.monotonic() - started)


async def _ready(run: Run, name: str) -> bool:
    return await asyncio.to_thread(run.services.server(name).ready)


async def _watch_down(
    run: Run, names: list[str], since: float, until: float, log: HealthLog
) -> None:
    while time.monotonic() < until:
        states = await asyncio.gather(*(_ready(run, n) for n in names))
        for n, ok in zip(names, states, strict=True):
            if not ok and n not in log.not_ready:
                log.not_ready[n] = time.monotonic() - since
        await asyncio.sleep(POLL_S)


async def _watch_up(run: Run, names: list[str], since: float, log: HealthLog) -> None:
    deadline = since + UP_BOUND_S * 2
    while time.monotonic() < deadline and len(log.ready_again) < len(names):
        waiting = [n for n in names if n not in log.ready_again]
        states = await asyncio.gather(*(_ready(run, n) for n in waiting))
        for n, ok in zip(waiting, states, strict=True):
            if ok:
                log.ready_again[n] = time.monotonic() - since
        await asyncio.sleep(POLL_S)


def pause(
    target: str,
    pid: Callable[[Run], int],
    length: Callable[[Run], tuple[float, str]],
    down: tuple[str, ...],
) -> Fault:
    """SIGSTOP ``target`` (its pid from ``pid``) for ``length`` seconds (and the
    timeout it is a multiple of, for the note); the services in ``down`` must go not
    ready and come back, the others (but a paused service itself) stay ready."""

    async def fault(run: Run) -> str:
        await asyncio.sleep(2.0)
        seconds, why = length(run)
        watched = [n for n in SERVICES if n != target]
        log = HealthLog()
        process = pid(run)
        acked_before = len(run.load.acked)
        reads, reading = Reads(), asyncio.Event()
        readers = [asyncio.create_task(_read(run, reading, reads)) for _ in range(2)]
        os.kill(process, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            await _watch_down(run, watched, stopped, stopped + seconds, log)
        finally:
            os.kill(process, signal.SIGCONT)
        resumed = run.restarted_at = reads.resumed = time.monotonic()
        run.since = "SIGCONT"
        # A pause of a read-model store leaves the publisher writing: the backlog at
        # SIGCONT is caught up while the load goes on, by three models at once.
        run.rate_share = 0.25
        acked_paused = len(run.load.acked) - acked_before
        next_ack = asyncio.create_task(_first_ack(run, resumed))
        run.applied_at_restart = await applied(run)
        await _watch_up(run, watched, resumed, log)
        first_ack = await next_ack
        with contextlib.suppress(TimeoutError):
            remaining = resumed + UP_BOUND_S - time.monotonic()
            await asyncio.wait_for(reads.answered.wait(), max(0.0, remaining))
        await asyncio.sleep(1.0)  # and a few more reads
        reading.set()
        await asyncio.gather(*readers)
        note = _judge(run, target, seconds, why, down, watched, log, acked_paused, first_ack)
        return f"{note}; {_judge_reads(run, reads, resumed)}"

    return fault


async def _first_ack(run: Run, since: float, timeout: float = UP_BOUND_S) -> float:
    """Seconds from SIGCONT to the writers' next acknowledgement (-1: none)."""
    count = len(run.load.acked)
    while time.monotonic() < since + timeout:
        if len(run.load.acked) > count:
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    return -1.0


def _judge(
    run: Run,
    target: str,
    seconds: float,
    why: str,
    down: tuple[str, ...],
    watched: list[str],
    log: HealthLog,
    acked_paused: int,
    first_ack: float,
) -> str:
    for n in down:
        took = log.not_ready.get(n)
        if took is None or took > DOWN_BOUND_S:
            run.failures.append(
                f"{n} stayed ready with {target} hung"
                + ("" if took is None else f" for {took:.1f}s > {DOWN_BOUND_S:.0f}s")
            )
    for n in watched:
        if n not in down and n in log.not_ready:
            run.failures.append(f"{n} went not ready ({log.not_ready[n]:.1f}s) with {target} hung")
        back = log.ready_again.get(n)
        if back is None or back > UP_BOUND_S:
            run.failures.append(
                f"{n} not ready {UP_BOUND_S:.0f}s after SIGCONT"
                if back is None
                else f"{n} ready again {back:.1f}s after SIGCONT > {UP_BOUND_S:.0f}s"
            )
    if first_ack < 0:
        run.failures.append(f"no command acknowledged {UP_BOUND_S:.0f}s after SIGCONT")
    went = ", ".join(f"{n} {log.not_ready[n]:.1f}s" for n in down if n in log.not_ready)
    back = max(log.ready_again.values(), default=-1.0)
    return (
        f"{target} paused {seconds:.0f}s ({why}); {acked_paused} acked while paused; "
        f"not ready: {went or '-'}; all ready {back:.1f}s and next ack {first_ack:.1f}s "
        "after SIGCONT"
    )


def _judge_reads(run: Run, reads: Reads, resumed: float) -> str:
    """Reads answer again soon after SIGCONT, never older than an acknowledged write
    (``behind``), and no call outlives its deadline by much."""
    first = reads.first_after(resumed)
    if first < 0 or first > UP_BOUND_S:
        run.failures.append(f"no read answered within {UP_BOUND_S:.0f}s of SIGCONT")
    if reads.behind:
        run.failures.append(f"{reads.behind} reads behind an acknowledged write")
    if reads.longest > CLIENT_DEADLINE_S + 2:
        run.failures.append(f"a read took {reads.longest:.1f}s (deadline {CLIENT_DEADLINE_S:.0f}s)")
    failed = ", ".join(f"{n} {c}" for c, n in sorted(reads.failed.items())) or "none failed"
    return f"reads: {reads.ok} ok ({failed}), first {first:.1f}s after SIGCONT"


def _nats_pid(run: Run) -> int:
    return int(run.stack.nats.procs[0].pid)


def _valkey_pid(run: Run) -> int:
    return int(run.stack.valkey_proc.pid)


def _graph_pid(run: Run) -> int:
    proc = run.stack.graph.proc
    assert proc is not None, "the graph store must be one this session started"
    return int(proc.pid)


def _publisher_pid(run: Run) -> int:
    return int(run.services.procs["publisher"].pid)


def _query_pid(run: Run) -> int:
    return int(run.services.procs["query"].pid)


# The writers' (and readers') gRPC deadline (harness.Load: ContextClient(timeout=5)).
CLIENT_DEADLINE_S = 5.0


def _nats_length(run: Run) -> tuple[float, str]:
    s = run.settings
    longest = max(
        s.eventstore.request_timeout_s,
        s.projector.pull_expires_s,
        s.projector.ack_wait_s,
        CLIENT_DEADLINE_S,
    )
    return 3 * longest, f"3x request timeout/pull expiry {longest:.0f}s"


def _valkey_length(run: Run) -> tuple[float, str]:
    t = run.settings.valkey.socket_timeout_s
    return 3 * t, f"3x socket timeout {t:.0f}s"


def _graph_length(run: Run) -> tuple[float, str]:
    t = run.settings.graph.connection_timeout_s
    return 2 * t, f"2x connection timeout {t:.0f}s"


def _publisher_length(run: Run) -> tuple[float, str]:
    return 3 * CLIENT_DEADLINE_S, f"3x client deadline {CLIENT_DEADLINE_S:.0f}s"


pause_nats = pause(
    "nats", _nats_pid, _nats_length, down=("publisher", "projector", "snapshotter", "query")
)
pause_valkey = pause("valkey", _valkey_pid, _valkey_length, down=("projector", "query"))
pause_graph = pause("graph", _graph_pid, _graph_length, down=("projector",))
pause_publisher = pause("publisher", _publisher_pid, _publisher_length, down=())
pause_query = pause("query", _query_pid, _publisher_length, down=())
