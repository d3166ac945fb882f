"""Model-based differential test of sessions on the whole ledger stack (real NATS, Valkey
and the graph store; observer, projector and ProcessQueryService in this process).

Seeded random sequences (a fixed set of seeds: reproducible) drive the real emitter
(``emit.Session`` through ``ObserverWriter``), the SDK (``jetsource.sdk.Observer``:
component processes nested under a session, several levels deep), raw ``RecordBatch``
writers and ``jetsource sessions`` (CliRunner, in this process) with:

- sessions started, events emitted (catalog types and unknown ones, random JSON data);
- nested component processes started, given events, ended (completed, failed,
  cancelled) or left running;
- sessions ended completed, failed (an exception), interrupted (cancellation,
  KeyboardInterrupt), or abandoned (the emitter dies: no ``session_ended``);
- the same record sent again (same event id, after a lost answer; a new id under the
  same idempotency key): one event;
- concurrent writers on one session (the emitter and raw writers at once): any
  interleaving that keeps each writer's order, every event once;
- live follows (stream reader and WatchSession through the query reader; from seq 0,
  from a random seq mid-way, with and without ``--no-stop``) started at random points;
- prunes (by count, by age; dry runs; through either reader's listing);
- bad input: reserved or malformed event types, numbers the ledger cannot hold, bad
  ids, a batch with one bad event, forged tombstones, bad CLI arguments, a bad import.

A plain-Python model says what every read must answer: ``list`` (status, command,
counts; status/search/limit filters), ``show`` (record and the fold of its events),
``export`` (from any seq), ``follow`` (every event exactly once, in order, backlog and
live), the process tree, ``ListProcesses`` (kind, status and root filters, paged),
``GetProcess``, the CLI's JSON. Both readers (``stream`` and ``query``) must agree
with it once the read models have caught up. Pruned sessions (and every process under
them) disappear from all of these. At the end each process read model has the digest
of a rebuild from the stream.

Runtime: about 17 s per seed (64 steps, four seeds: 70 s) on a 2-core machine; the
first seed runs in ``make test``, all four with ``-m chaos``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import struct_pb2
from typer.testing import CliRunner

from jetsource._gen.process.v1 import events_pb2
from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource._gen.process.v1 import query_pb2 as q
from jetsource.cli import output as out
from jetsource.cli.sessions import app as sessions_app
from jetsource.core.aio import stop_task
from jetsource.core.clock import NS
from jetsource.core.errors import ValidationError
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.emit import Session
from jetsource.domains.sessions.format import SessionEvent
from jetsource.domains.sessions.ledger import ObserverWriter, ProcessSummary, QueryReader
from jetsource.domains.sessions.progress import fold
from jetsource.domains.sessions.service import SessionNotFoundError, Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings, SessionsSettings
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.sdk import Observer as SdkObserver
from jetsource.sdk.observe import Process as SdkProcess
from tests.e2e.test_process_query import MODELS, Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.test_prune_on_the_ledger import rebuilt_equals_live
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.e2e

# MODEL_SEEDS=1,2,3 runs other seeds (the checks outside rerun it with other inputs).
SEEDS = [int(x) for x in os.environ.get("MODEL_SEEDS", "7,1123,90210,4242").split(",")]
STEPS = 64
QUIET = 3600.0  # interrupted_after_s: an unended session is active unless the clock jumps
# A session's status in the registry (interrupted = process_cancelled) ...
STATUS_PB = {
    "running": q.PROCESS_STATUS_RUNNING,
    "completed": q.PROCESS_STATUS_COMPLETED,
    "failed": q.PROCESS_STATUS_FAILED,
    "interrupted": q.PROCESS_STATUS_CANCELLED,
}
# ... and a component process's (interrupted: its parent ended while it ran).
PROC_PB = {
    "running": q.PROCESS_STATUS_RUNNING,
    "completed": q.PROCESS_STATUS_COMPLETED,
    "failed": q.PROCESS_STATUS_FAILED,
    "cancelled": q.PROCESS_STATUS_CANCELLED,
    "interrupted": q.PROCESS_STATUS_INTERRUPTED,
}


def normal(value: Any) -> Any:
    """Data as the ledger gives it back (docs/sessions.md): integral numbers as ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v) for v in value]
    return value


def text(data: Any) -> str:
    """JSON text: 3 and 3.0 differ here, as they do in an export."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


# -- the model ----------------------------------------------------------------------------


@dataclass
class MEvent:
    marker: int
    type: str
    data: dict[str, Any]
    phase: int
    writer: str
    index: int  # position in its writer's sequence


@dataclass
class MProc:
    pid: str
    parent: str
    name: str
    kind: str
    status: str = "running"
    count: int = 1
    sdk: SdkProcess | None = None


@dataclass
class MSession:
    sid: str
    command: str
    argv: list[str]
    start_rank: int
    events: list[MEvent] = field(default_factory=list)
    status: str = "active"  # active, completed, failed, interrupted; "abandoned" is active
    error: str = ""
    abandoned: bool = False
    end_lo: int = 0
    end_hi: int = 0
    pruned: bool = False
    imported: bool = False
    live: Session | None = None
    procs: dict[str, MProc] = field(default_factory=dict)  # every process below it

    @property
    def ended(self) -> bool:
        return self.status != "active"

    @property
    def count(self) -> int:
        return 1 + len(self.events) + (1 if self.ended else 0)


@dataclass
class Follower:
    sid: str
    via: str  # stream or query
    after: int
    until_end: bool
    got: list[SessionEvent] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None


class Mine:
    """A reader that shows only this run's processes (PROCESS_EVENTS is shared by the
    tests of a pytest session)."""

    def __init__(self, reader: Any, ids: set[str]) -> None:
        self._reader, self._ids = reader, ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def processes(self) -> dict[str, ProcessSummary]:
        procs = await self._reader.processes()
        return {pid: p for pid, p in procs.items() if pid in self._ids}

    async def sessions(self) -> list[ProcessSummary]:
        return [p for p in await self._reader.sessions() if p.process_id in self._ids]


def random_data(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth > 2 or pick < 0.5:
        return rng.choice(
            [
                rng.randint(-(10**6), 10**6),
                rng.choice([0.5, -2.25, 1e-3, 3.0]),
                rng.choice([True, False, None]),
                rng.choice(["", "x", "ünïcødé ✓", "a\nb", 'quote"d', "  spaced "]),
                rng.choice([2**53, -(2**53)]),
            ]
        )
    if pick < 0.75:
        return [random_data(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": random_data(rng, depth + 1) for i in range(rng.randint(0, 3))}


CATALOG_EVENTS: list[Callable[[random.Random], tuple[str, dict[str, Any]]]] = [
    lambda r: ("level_started", {"level": r.randint(0, 3), "node_ids": ["a", "b"]}),
    lambda r: ("node_generation_completed", {"node_id": r.choice("ab")}),
    lambda r: ("scan_progress", {"files_scanned": r.randint(0, 99)}),
    lambda r: ("file_changed", {"path": f"src/{r.randint(0, 9)}.py"}),
    lambda r: ("queue_stats", {"pending": r.randint(0, 5), "in_flight": 1}),
]


class Run:
    """One seeded run: the system under test, the model and the checks."""

    def __init__(
        self,
        seed: int,
        stack: Stack,  # noqa: F811
        client: SessionsClient,
        sdk: SdkObserver,
        settings: JetsourceSettings,
        unique: str,
        tmp: Path,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.stack = stack
        self.client = client
        self.sdk = sdk
        self.settings = settings
        self.unique = unique
        self.tmp = tmp
        self.writer = ObserverWriter(stack.record)
        self.sessions: dict[str, MSession] = {}
        self.ids: set[str] = set()  # every process id this run made
        self.followers: list[Follower] = []
        self.markers = itertools.count(1)
        self.phase = 0
        self.log: list[str] = []
        self.skew = 0  # ns added to the readers' clock
        self.frozen = 0  # or the readers' clock stands still here
        base = client.sessions.settings
        self.stream = Sessions(Mine(client.sessions.reader, self.ids), base, self.clock)
        self.query = Sessions(
            Mine(QueryReader(stack.reads, timeout_s=10, page_size=3), self.ids), base, self.clock
        )

    def clock(self) -> int:
        return self.frozen or time.time_ns() + self.skew

    def note(self, text: str) -> None:
        self.log.append(text)

    def where(self) -> str:
        return f"seed {self.seed}, steps: " + "; ".join(self.log[-12:])

    # -- helpers ----------------------------------------------------------------------

    def open_sessions(self) -> list[MSession]:
        return [s for s in self.sessions.values() if s.live is not None]

    def live_procs(self) -> list[tuple[MSession, MProc]]:
        return [
            (s, p)
            for s in self.sessions.values()
            for p in s.procs.values()
            if p.sdk is not None and not s.pruned
        ]

    def event(self, s: MSession, writer: str, index: int) -> MEvent:
        rng = self.rng
        marker = next(self.markers)
        if rng.random() < 0.5:
            event_type, data = rng.choice(CATALOG_EVENTS)(rng)
        else:
            event_type = rng.choice(["custom_step", "tool_called", "x9_y"])
            data = {f"f{i}": random_data(rng) for i in range(rng.randint(0, 4))}
        data["m"] = marker
        return MEvent(marker, event_type, data, self.phase, writer, index)

    def ended_below(self, s: MSession, pid: str) -> None:
        """An ending interrupts the running processes below it (the registry's rule)."""
        todo = [pid]
        while todo:
            x = todo.pop()
            for p in s.procs.values():
                if p.parent == x:
                    if p.status == "running":
                        p.status = "interrupted"
                    todo.append(p.pid)

    # -- actions ----------------------------------------------------------------------

    async def start(self) -> None:
        n = len(self.sessions)
        command = self.rng.choice(["context generate", "scan", "watch", "Deploy"])
        command = f"{command} {self.unique} #{n}"
        argv = [self.rng.choice(["-v", "--fast", "ü"]) for _ in range(self.rng.randint(0, 2))]
        live = Session(self.writer, command, argv=argv, heartbeat_s=QUIET)
        self.ids.add(live.id)
        await live.__aenter__()
        self.phase += 1
        self.sessions[live.id] = MSession(live.id, command, argv, n, live=live)
        self.note(f"start {live.id[-6:]}")

    async def emit(self, s: MSession) -> None:
        assert s.live is not None
        self.phase += 1
        k = self.rng.randint(1, 6)
        for i in range(k):
            e = self.event(s, "emitter", i)
            s.live.emit(e.type, e.data)
            s.events.append(e)
        await s.live.flush()
        self.note(f"emit {k} {s.sid[-6:]}")

    async def send(self, events: list[events_pb2.CanonicalEvent], **kw: Any) -> Any:
        return await self.stack.record.RecordBatch(ob.RecordBatchRequest(events=events), **kw)

    def canonical(self, pid: str, e: MEvent, **kw: Any) -> events_pb2.CanonicalEvent:
        data = struct_pb2.Struct()
        data.update(e.data)
        return events_pb2.CanonicalEvent(
            process_id=pid, event_type=e.type, data=data, source="model", **kw
        )

    async def concurrent(self, s: MSession) -> None:
        """The emitter and two raw writers on the session at once."""
        assert s.live is not None
        self.phase += 1
        live = s.live
        plans: dict[str, list[MEvent]] = {
            w: [self.event(s, w, i) for i in range(self.rng.randint(1, 5))]
            for w in ("emitter", "raw1", "raw2")
        }
        sizes = {w: [self.rng.randint(1, 3) for _ in range(6)] for w in plans}

        async def raw(w: str) -> None:
            evs, i = plans[w], 0
            for n in sizes[w]:
                chunk = evs[i : i + n]
                i += n
                if not chunk:
                    return
                await self.send([self.canonical(s.sid, e, event_id=uuid7()) for e in chunk],
                                timeout=10)  # fmt: skip
                await asyncio.sleep(0)

        async def emitter() -> None:
            for e in plans["emitter"]:
                live.emit(e.type, e.data)
                await asyncio.sleep(0)
            await live.flush()

        await asyncio.gather(emitter(), raw("raw1"), raw("raw2"))
        for evs in plans.values():
            s.events.extend(evs)
        self.note(f"concurrent {s.sid[-6:]}")

    async def retry(self, s: MSession) -> None:
        """One record sent several ways: a lost answer then again, the same again, a
        new id under the same idempotency key. One event."""
        self.phase += 1
        e = self.event(s, "retry", 0)
        key = f"k-{e.marker}-{self.unique}"
        ce = self.canonical(s.sid, e, event_id=uuid7(), idempotency_key=key)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.send([ce], timeout=0.002)
        first = (await self.send([ce], timeout=10)).positions[0]
        again = (await self.send([ce], timeout=10)).positions[0]
        assert again.duplicate and again.process_seq == first.process_seq, self.where()
        other = events_pb2.CanonicalEvent()
        other.CopyFrom(ce)
        other.event_id = ""
        third = (await self.send([other], timeout=10)).positions[0]
        assert third.duplicate and third.event_id == first.event_id, self.where()
        s.events.append(e)
        self.note(f"retry {s.sid[-6:]}")

    async def nest(self, s: MSession) -> None:
        """A component process under the session or under one of its open processes."""
        parents: list[tuple[str, Any]] = [(s.sid, s.live)]
        parents += [(p.pid, p.sdk) for p in s.procs.values() if p.sdk is not None]
        pid_parent, handle = self.rng.choice(parents)
        kind = self.rng.choice(["provider", "tool", "agent"])
        name = f"{kind} {len(s.procs)}"
        proc = self.sdk.process(name, kind=kind, parent=cast(Any, handle))
        await proc.__aenter__()
        self.ids.add(proc.process_id)
        m = MProc(proc.process_id, pid_parent, name, kind, sdk=proc)
        s.procs[proc.process_id] = m
        for _ in range(self.rng.randint(0, 3)):
            proc.emit("step_done", {"n": self.rng.randint(0, 9)})
            m.count += 1
        await self.sdk.flush()
        self.note(f"nest {proc.process_id[-6:]} under {pid_parent[-6:]}")

    async def end_proc(self, s: MSession, p: MProc) -> None:
        assert p.sdk is not None
        how = self.rng.choice(["completed", "failed", "cancelled"])
        exc: BaseException | None = {
            "completed": None,
            "failed": ValueError("no"),
            "cancelled": asyncio.CancelledError(),
        }[how]
        await p.sdk.__aexit__(type(exc) if exc else None, exc, None)
        p.sdk, p.status = None, how
        p.count += 1
        self.ended_below(s, p.pid)
        await self.sdk.flush()
        self.note(f"end proc {p.pid[-6:]} {how}")

    async def end(self, s: MSession, how: str = "") -> None:
        assert s.live is not None
        how = how or self.rng.choice(["completed", "completed", "failed", "cancel", "ctrl-c"])
        exc: BaseException | None = None
        if how == "failed":
            exc = RuntimeError(f"boom {len(s.events)}")
            s.status, s.error = "failed", f"RuntimeError: boom {len(s.events)}"
        elif how == "cancel":
            exc = asyncio.CancelledError()
            s.status, s.error = "interrupted", "CancelledError"
        elif how == "ctrl-c":
            exc = KeyboardInterrupt()
            s.status, s.error = "interrupted", "KeyboardInterrupt"
        else:
            s.status = "completed"
        self.phase += 1
        s.end_lo = time.time_ns()
        await s.live.close(exc)
        s.end_hi = time.time_ns()
        self.ended_below(s, s.sid)
        assert s.live.error is None and s.live.dropped == 0, self.where()
        s.live = None
        self.note(f"end {s.sid[-6:]} {how}")

    async def abandon(self, s: MSession) -> None:
        """The emitter dies: no session_ended, ever."""
        assert s.live is not None
        s.live._closed = True
        await stop_task(s.live._task)
        s.live, s.abandoned = None, True
        self.note(f"abandon {s.sid[-6:]}")

    def follow(self, s: MSession) -> None:
        via = self.rng.choice(["stream", "query"])
        after = self.rng.randint(0, s.count) if self.rng.random() < 0.6 else 0
        until_end = self.rng.random() < 0.7
        f = Follower(s.sid, via, after, until_end)
        sessions = self.stream if via == "stream" else self.query

        async def run() -> None:
            try:
                async for r in sessions.follow(s.sid, after, until_end=until_end):
                    f.got.append(r.event)
            except Exception as exc:
                f.error = exc

        f.task = asyncio.create_task(run())
        self.followers.append(f)
        self.note(f"follow {s.sid[-6:]} via {via} after {after} stop={until_end}")

    async def bad_input(self) -> None:
        """Refused, and nothing changes (the next check compares everything)."""
        rng = self.rng
        choice = rng.randrange(7)
        live = self.open_sessions()
        if choice == 0 and live:
            s = rng.choice(live)
            assert s.live is not None
            refused: list[tuple[str, dict[str, Any]]] = [
                ("process_started", {}),
                ("session_ended", {"status": "completed"}),
                ("process_completed", {}),
                ("Bad Type", {}),
                ("bad.type", {}),
                ("x" * 65, {}),
                ("fine_type", {"n": 2**53 + 1}),
                ("fine_type", {"n": float("nan")}),
                ("fine_type", {"n": {1, 2}}),
            ]
            for t, d in refused:
                with pytest.raises((ValueError, TypeError)):
                    s.live.emit(t, d)
            await s.live.flush()
            assert s.live.error is None and s.live.dropped == 0, self.where()
        elif choice == 1:
            pid = rng.choice(["a b", "x.y", "s*", "", "z" * 300, "jetsource-pruner"])
            target = rng.choice(list(self.sessions)) if self.sessions else "nobody"
            good = events_pb2.CanonicalEvent(process_id=target, event_type="custom_step")
            bad = events_pb2.CanonicalEvent(process_id=pid, event_type="custom_step")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await self.send([good, bad], timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, self.where()
        elif choice == 2:
            target = rng.choice(list(self.sessions)) if self.sessions else "nobody"
            data = struct_pb2.Struct()
            data.update({"root": target, "processes": [target]})
            forged = events_pb2.CanonicalEvent(
                process_id=target, event_type="process_pruned", data=data
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await self.send([forged], timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, self.where()
        elif choice == 3:
            for sessions in (self.stream, self.query):
                with pytest.raises((ValidationError, grpc.aio.AioRpcError)):
                    await sessions.show("a b")
                with pytest.raises(SessionNotFoundError):
                    await sessions.show(f"nobody-{self.unique}")
        elif choice == 4 and self.sessions:
            sid = rng.choice(list(self.sessions))
            call = self.stack.reads.WatchSession(
                q.WatchSessionRequest(session_id=sid, after_seq=-1), timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        elif choice == 5:
            code, _, err = await self.cli("stream", "list", "--status", "sleeping")
            assert code == 2 and "--status" in err, (code, err)
            code, _, err = await self.cli("stream", "prune", "--older-than", "soon")
            assert code == 2 and "--older-than" in err, (code, err)
        else:
            # An import with one bad line records nothing of the file.
            sid = f"imp-{self.unique}-{len(self.sessions)}"
            path = self.tmp / f"bad-{sid}.jsonl"
            lines = [
                {"ts": "2026-12-02T21:40:00.123Z", "session": sid, "seq": 1,
                 "type": "session_started", "data": {"command": "imported"}},
                {"ts": "2026-12-02T21:40:00.124Z", "session": sid, "seq": 2,
                 "type": "custom_step", "data": {"n": 2**60}},
            ]  # fmt: skip
            path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
            code, _, err = await self.cli("stream", "import", str(path))
            assert code == 2 and "line 2" in err, (code, err)
            self.ids.add(sid)  # so that it would be seen if anything were recorded
            for sessions in (self.stream, self.query):
                with pytest.raises(SessionNotFoundError):
                    await sessions.show(sid)
        self.note(f"bad input {choice}")

    async def import_twice(self) -> None:
        """A session imported from JSON lines through the observer, twice: one copy."""
        sid = f"imp-{self.unique}-{len(self.sessions)}"
        self.ids.add(sid)
        n = len(self.sessions)
        command = f"imported {self.unique} #{n}"
        s = MSession(sid, command, [], n, imported=True)
        self.phase += 1
        docs: list[dict[str, Any]] = [
            {"ts": f"2020-01-01T00:00:{n:02d}.100Z", "session": sid, "seq": 1,
             "type": "session_started", "data": {"command": command, "argv": []}}
        ]  # fmt: skip
        for i in range(self.rng.randint(0, 4)):
            e = self.event(s, "import", i)
            s.events.append(e)
            docs.append({"ts": f"2020-01-01T00:00:{n:02d}.{101 + i}Z", "session": sid,
                         "seq": i + 2, "type": e.type, "data": e.data})  # fmt: skip
        if self.rng.random() < 0.7:
            s.status = "completed"
            s.end_lo = s.end_hi = 1_577_836_800_200_000_000 + n * NS
            docs.append({"ts": f"2020-01-01T00:00:{n:02d}.200Z", "session": sid,
                         "seq": len(docs) + 1, "type": "session_ended",
                         "data": {"status": "completed"}})  # fmt: skip
        path = self.tmp / f"{sid}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        target = f"127.0.0.1:{self.stack.observer.port}"
        appended = []
        for _ in range(2):
            code, stdout, err = await self.cli(
                "stream", "import", str(path), "--observer", target, "-o", "json"
            )
            assert code == 0, err
            appended.append(json.loads(stdout)["appended"])
        assert appended == [len(docs), 0], self.where()
        self.sessions[sid] = s
        self.note(f"import {sid[-8:]} ({len(docs)} events)")

    async def prune(self, final: bool = False) -> None:
        """A prune (or a dry run) by count and/or age; the model chooses the same. The
        ``final`` one is real and removes something (every seed prunes)."""
        rng = self.rng
        ended = sorted(
            (s for s in self.sessions.values()
             if s.status in ("completed", "failed", "interrupted") and not s.pruned),
            key=lambda s: s.end_hi,
            reverse=True,
        )  # fmt: skip
        if not ended:
            return
        # The readers have caught up (the pruner finds a tree through its reader).
        await self.eventually(self.check_listed)
        await self.eventually(self.check_registry)
        keep = rng.choice([0, 1, 2, len(ended) + 1])
        older = 0.0
        live_ends = [s for s in ended if not s.imported]
        if rng.random() < 0.6 and len(live_ends) >= 2:
            # The age rule: a clock at which exactly the sessions ended before a cut
            # between two ends are older than `older` seconds.
            j = rng.randrange(len(live_ends) - 1)
            newer, older_s = live_ends[j], live_ends[j + 1]
            cut = (older_s.end_hi + newer.end_lo) // 2
            if older_s.end_hi < newer.end_lo:
                older = 1.0
                self.frozen = cut + int(older * NS)
        if keep == 0 and older == 0:
            keep = 1
        now = self.clock()
        chosen = [
            s
            for rank, s in enumerate(ended)
            if (keep and rank >= keep) or (older and now - s.end_hi > older * NS)
        ]
        chosen = list(reversed(chosen))
        dry = rng.random() < 0.25
        if final:
            dry = False
            if not chosen:  # every ended session, by age
                keep, older = 0, 1.0
                self.frozen = max(s.end_hi for s in ended) + 2 * NS
                chosen = list(reversed(ended))
        via = rng.choice([self.stream, self.query])
        try:
            report = await via.prune(self.client.purger, older_than_s=older, keep=keep, dry_run=dry)
        finally:
            self.frozen = 0
        want = [s.sid for s in chosen]
        assert [r.session_id for r in report.pruned] == want, (
            f"prune keep={keep} older={older}: {self.where()}"
        )
        assert report.processes == sum(1 + len(s.procs) for s in chosen), self.where()
        if not dry:
            for s in chosen:
                s.pruned = True
        self.note(f"prune keep={keep} older={older} dry={dry} -> {len(want)}")

    # -- the CLI ------------------------------------------------------------------------

    async def cli(self, reader: str, *args: str) -> tuple[int, str, str]:
        env = {
            "JETSOURCE_NATS__URL": self.settings.nats_url(),
            "JETSOURCE_SESSIONS__READER": reader,
            "JETSOURCE_SESSIONS__PROCESS_QUERY": f"127.0.0.1:{self.stack.query.port}",
            "JETSOURCE_SESSIONS__CLAIMS_BUCKET": f"CL_{self.unique}",
            "JETSOURCE_SESSIONS__INTERRUPTED_AFTER_S": str(QUIET),
            "JETSOURCE_CLIENT__TIMEOUT_S": "2",
        }
        runner = CliRunner(env=env)
        result = await asyncio.to_thread(
            runner.invoke, sessions_app, list(args), catch_exceptions=False
        )
        out.set_mode(None)
        return result.exit_code, result.stdout, result.stderr

    # -- the checks -----------------------------------------------------------------------

    def expected_status(self, s: MSession, now_skewed: bool = False) -> str:
        if s.ended:
            return s.status
        return "interrupted" if now_skewed else "active"

    def check_events(self, s: MSession, got: list[SessionEvent]) -> None:
        """The export against the model: session_started first, session_ended last,
        every marked event once; phases in order, each writer's events in its order;
        then the model adopts the observed interleaving."""
        where = f"{s.sid}: {self.where()}"
        assert [e.seq for e in got] == list(range(1, len(got) + 1)), where
        assert len(got) == s.count, (len(got), s.count, [e.type for e in got], where)
        first = got[0]
        assert first.type == "session_started", where
        assert first.data["command"] == s.command and first.data["argv"] == s.argv, where
        middle = got[1 : 1 + len(s.events)]
        if s.ended:
            last = got[-1]
            assert last.type == "session_ended", where
            assert last.data["status"] == s.status, where
            assert last.data.get("error", "") == s.error, where
            assert "dropped" not in last.data, where
        by_marker = {e.marker: e for e in s.events}
        seen = [e.data.get("m") for e in middle]
        assert sorted(cast(list[int], seen)) == sorted(by_marker), (seen, where)
        order: list[MEvent] = []
        for e in middle:
            m = by_marker[e.data["m"]]
            assert (e.type, text(e.data)) == (m.type, text(normal(m.data))), where
            order.append(m)
        last_index: dict[tuple[int, str], int] = {}
        for i, m in enumerate(order):
            assert i == 0 or order[i - 1].phase <= m.phase, ("phases", where)
            key = (m.phase, m.writer)
            assert last_index.get(key, -1) < m.index, ("writer order", where)
            last_index[key] = m.index
        s.events = order

    async def eventually(self, check: Callable[[], Awaitable[None]], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await check()
                return
            except (AssertionError, SessionNotFoundError):
                # not there yet: the emitter flushes in the background, the read
                # models follow the stream (seen under CI load); still wrong at the
                # deadline is a failure
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def check_all(self, deep: bool) -> None:
        """Every read against the model, once the read models have caught up."""
        alive = [s for s in self.sessions.values() if not s.pruned]
        gone = [s for s in self.sessions.values() if s.pruned]
        for s in alive:
            for sessions in (self.stream, self.query):

                async def exported(sessions: Sessions = sessions, s: MSession = s) -> None:
                    got = await sessions.export(s.sid)
                    self.check_events(s, got)

                await self.eventually(exported)

        await self.eventually(self.check_listed)
        await self.eventually(self.check_registry)
        await self.check_filters()
        await self.check_followers()
        for s in alive:
            record, state, recorded = await self.query.show(s.sid)
            srecord, sstate, _ = await self.stream.show(s.sid)
            assert replace(record, last_recorded_ns=0) == replace(srecord, last_recorded_ns=0), (
                s.sid,
                self.where(),
            )
            assert state == sstate, (s.sid, self.where())
            assert state == fold([r.event for r in recorded])
            assert (record.status, record.command, record.event_count, record.last_seq) == (
                self.expected_status(s), s.command, s.count, s.count,
            ), (s.sid, self.where())  # fmt: skip
            assert record.error == s.error, (s.sid, self.where())
            if deep:
                after = self.rng.randint(0, s.count + 1)
                for sessions in (self.stream, self.query):
                    part = await sessions.export(s.sid, after)
                    assert [e.seq for e in part] == list(range(after + 1, s.count + 1))
        for s in gone:
            await self.eventually(partial(self.check_gone, s))
        if deep:
            await self.check_cli()

    async def check_listed(self) -> None:
        alive = [s for s in self.sessions.values() if not s.pruned]
        for name, sessions in (("stream", self.stream), ("query", self.query)):
            rows = await sessions.list_sessions(with_errors=True)
            got = {r.session_id: (r.status, r.command, r.event_count, r.last_seq, r.error)
                   for r in rows}  # fmt: skip
            want = {
                # the error `show` says, with either reader (an interrupted one's too)
                s.sid: (self.expected_status(s), s.command, s.count, s.count, s.error)
                for s in alive
            }  # fmt: skip
            assert got == want, (name, self.where())
            assert [r.session_id for r in rows] == [
                s.sid for s in sorted(alive, key=lambda s: s.start_rank, reverse=True)
                if not s.imported
            ] + [s.sid for s in sorted(alive, key=lambda s: s.start_rank, reverse=True)
                 if s.imported], (name, "order", self.where())  # fmt: skip

    async def check_registry(self) -> None:
        """GetProcess and the tree of every process of the run."""
        for s in self.sessions.values():
            ids = [s.sid, *s.procs]
            for pid in ids:
                try:
                    got = (await self.stack.reads.GetProcess(
                        q.GetProcessRequest(process_id=pid), timeout=5)).process  # fmt: skip
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                    assert s.pruned, (pid, "missing", self.where())
                    continue
                assert not s.pruned, (pid, "pruned yet in the registry", self.where())
                if pid == s.sid:
                    status = "running" if not s.ended else s.status
                    want = (s.sid, "", 0, "session", s.command, STATUS_PB[status], s.count)
                else:
                    p = s.procs[pid]
                    depth, x = 1, p.parent
                    while x != s.sid:
                        depth, x = depth + 1, s.procs[x].parent
                    want = (s.sid, p.parent, depth, p.kind, p.name, PROC_PB[p.status],
                            p.count)  # fmt: skip
                seen = (got.root_process_id, got.parent_process_id, got.depth, got.kind,
                        got.name, got.status, got.event_count)  # fmt: skip
                assert seen == want, (pid, self.where())
            if s.pruned:
                continue
            for sessions in (self.stream, self.query):
                tree = await sessions.tree(s.sid)
                # Children by parent of this session's subtree, and nothing else.
                got_tree = {x: sorted(p.process_id for p in kids) for x, kids in tree.items()}
                want_tree: dict[str, list[str]] = {}
                for p in s.procs.values():
                    want_tree.setdefault(p.parent, []).append(p.pid)
                assert got_tree == {k: sorted(v) for k, v in want_tree.items()}, self.where()

    async def check_filters(self) -> None:
        """list's status, search and limit; ListProcesses by kind, status and root, paged."""
        rng = self.rng
        alive = sorted(
            (s for s in self.sessions.values() if not s.pruned),
            key=lambda s: (not s.imported, s.start_rank),
            reverse=True,
        )
        skewed = rng.random() < 0.3
        if skewed:  # every unended session has been quiet for too long: interrupted
            self.skew = int(2 * QUIET * NS)
        try:
            statuses = rng.sample(["active", "completed", "failed", "interrupted"],
                                  rng.randint(0, 2))  # fmt: skip
            search = rng.choice(["", self.unique, "SCAN", "#1", "imported", "nothing-x"])
            if alive and rng.random() < 0.3:
                search = rng.choice(alive).sid[-8:].upper()
            limit = rng.choice([0, 1, 2, 5])
            want = [
                s.sid for s in alive
                if (not statuses or self.expected_status(s, skewed) in statuses)
                and (not search or search.lower() in f"{s.sid} {s.command}".lower())
            ]  # fmt: skip
            want = want[:limit] if limit else want
            for name, sessions in (("stream", self.stream), ("query", self.query)):
                rows = await sessions.list_sessions(statuses, search, limit)
                got = [r.session_id for r in rows]
                # Mine() hides other tests' sessions, which may take places in a limit.
                assert got == want, (name, statuses, search, limit, skewed, self.where())
                for r in rows:
                    assert r.status == self.expected_status(self.sessions[r.session_id], skewed)
        finally:
            self.skew = 0
        # ListProcesses: sessions by kind (and a status), paged; a root's whole tree.
        status = rng.choice([None, "running", "completed", "failed", "interrupted"])
        request = q.ListProcessesRequest(kind="session", page_size=rng.randint(1, 4))
        if status:
            request.statuses.append(STATUS_PB[status])
        got = await self.pages(request)
        want = [
            s.sid for s in sorted(alive, key=lambda s: s.start_rank, reverse=True)
            if status is None or (s.status if s.ended else "running") == status
        ]  # fmt: skip
        assert [pid for pid in got if pid in self.ids] == want, (status, self.where())
        if alive:
            s = rng.choice(alive)
            got = await self.pages(q.ListProcessesRequest(root_process_id=s.sid, page_size=2))
            assert sorted(got) == sorted([s.sid, *s.procs]), self.where()

    async def pages(self, request: q.ListProcessesRequest) -> list[str]:
        out: list[str] = []
        while True:
            reply = await self.stack.reads.ListProcesses(request, timeout=5)
            out += [p.process_id for p in reply.processes]
            if not reply.next_page_token:
                assert len(out) == len(set(out)), "a page repeated a process"
                return out
            request.page_token = reply.next_page_token

    async def check_followers(self) -> None:
        """Each follower has every event above its seq exactly once, in order, equal to
        the export; one whose session ended stops after session_ended (unless told
        not to)."""
        for f in list(self.followers):
            s = self.sessions[f.sid]
            if s.pruned:
                continue
            want = [e for e in await self.stream.export(f.sid) if e.seq > f.after]

            async def delivered(f: Follower = f, want: list[SessionEvent] = want) -> None:
                assert f.error is None, (f, self.where())
                assert [e.seq for e in f.got] == [e.seq for e in want], (
                    f.via,
                    f.after,
                    f.sid,
                    self.where(),
                )

            await self.eventually(delivered)
            assert f.got == want, (f.via, self.where())
            assert f.task is not None
            if s.ended and want:
                if f.until_end:
                    await asyncio.wait_for(f.task, 10)
                else:
                    await stop_task(f.task)
                self.followers.remove(f)

    async def check_gone(self, s: MSession) -> None:
        """A pruned session: in no read, its processes nowhere."""
        for sessions in (self.stream, self.query):
            with pytest.raises(SessionNotFoundError):
                await sessions.show(s.sid)
            with pytest.raises(SessionNotFoundError):
                await sessions.export(s.sid)
            assert s.sid not in {r.session_id for r in await sessions.list_sessions()}
            procs = await sessions.reader.processes()
            assert not ({s.sid, *s.procs} & set(procs)), self.where()
            for pid in s.procs:
                assert await sessions.reader.events(pid) == []
        for pid in [s.sid, *s.procs]:
            assert await self.client.store.last_version(pid) == 0, (pid, self.where())

    async def check_cli(self) -> None:
        """`jetsource sessions list/show/export -o json` with either reader."""
        reader = self.rng.choice(["stream", "query"])
        code, stdout, err = await self.cli(reader, "list", "-n", "0", "-o", "json")
        assert code == 0, err
        rows = {r["session"]: r for r in json.loads(stdout) if r["session"] in self.ids}
        want = {s.sid: s for s in self.sessions.values() if not s.pruned}
        assert set(rows) == set(want), (reader, self.where())
        for sid, r in rows.items():
            s = want[sid]
            assert (r["status"], r["command"], r["event_count"]) == (
                self.expected_status(s), s.command, s.count
            ), (reader, sid, self.where())  # fmt: skip
        pick = self.rng.choice(list(self.sessions.values()))
        code, stdout, err = await self.cli(reader, "show", pick.sid, "-o", "json")
        if pick.pruned:
            assert code == 1 and "NOT_FOUND" in err, (reader, code, err, self.where())
            code, stdout, err = await self.cli(reader, "follow", pick.sid)
            assert code == 1 and "not found" in err, (reader, code, err, self.where())
            return
        assert code == 0, err
        shown = json.loads(stdout)
        assert (shown["status"], shown["event_count"], shown["last_seq"]) == (
            self.expected_status(pick), pick.count, pick.count
        ), (reader, self.where())  # fmt: skip
        code, stdout, err = await self.cli(reader, "export", pick.sid)
        assert code == 0, err
        lines = [SessionEvent.from_json(line) for line in stdout.splitlines()]
        assert lines == await self.stream.export(pick.sid), (reader, self.where())
        if pick.ended:
            after = self.rng.randint(0, pick.count - 1)
            code, stdout, err = await self.cli(reader, "follow", pick.sid, "--after", str(after))
            assert code == 0, err
            assert [SessionEvent.from_json(x).seq for x in stdout.splitlines()] == list(
                range(after + 1, pick.count + 1)
            ), (reader, self.where())

    # -- the driver -----------------------------------------------------------------------

    async def step(self) -> None:
        rng = self.rng
        live = self.open_sessions()
        procs = self.live_procs()
        actions: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (3 if len(live) < 3 else 0.5, self.start),
            (0.6, self.import_twice),
            (0.8, self.bad_input),
            (0.7, self.prune),
        ]
        if live:
            pick = rng.choice(live)
            actions += [
                (3, lambda: self.emit(pick)),
                (1.2, lambda: self.concurrent(pick)),
                (1, lambda: self.retry(pick)),
                (1.2, lambda: self.nest(pick)),
                (2, lambda: self.end(pick)),
                (0.4, lambda: self.abandon(pick)),
            ]
        if procs:
            s, p = rng.choice(procs)
            actions.append((1.2, lambda: self.end_proc(s, p)))
        followable = [s for s in self.sessions.values() if not s.pruned]
        if followable:
            target = rng.choice(followable)

            async def follow() -> None:
                self.follow(target)

            actions.append((2, follow))
        weights = [w for w, _ in actions]
        _, action = rng.choices(actions, weights)[0]
        await action()

    async def run(self, steps: int) -> None:
        for i in range(steps):
            await self.step()
            if i % 8 == 7:
                await self.check_all(deep=i % 16 == 15)
        # The end: every open session ends or is abandoned, every process ends, a last
        # prune, the last full check.
        for s in self.open_sessions():
            if self.rng.random() < 0.2:
                await self.abandon(s)
            else:
                await self.end(s)
        for s, p in self.live_procs():
            await self.end_proc(s, p)
        if not any(s.status in ("completed", "failed") and not s.pruned
                   for s in self.sessions.values()):  # fmt: skip
            await self.start()
            await self.end(list(self.sessions.values())[-1], "completed")
        await self.check_all(deep=True)
        await self.prune(final=True)
        await self.check_all(deep=True)
        for f in self.followers:
            await stop_task(f.task)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def client(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
    unique: str,
) -> AsyncIterator[SessionsClient]:
    chosen = SessionsSettings(claims_bucket=f"CL_{unique}", interrupted_after_s=QUIET)
    async with open_sessions(SessionsAppSettings(nats=settings.nats, sessions=chosen)) as c:
        yield c


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, models=MODELS), provision=False)
    yield p
    await p.close()


# One seed in `make test`, the others with the long runs in `make chaos`. Under load a
# seed failed about one CI run in six: a retried RecordBatch waited out a claim's 60 s
# lease (a request cut by its deadline right after its append left its claims pending)
# or read the whole session to find its event; the observer does neither now (20 seeded
# runs beside four busy loops on two cores passed after that).
@pytest.mark.parametrize(
    "seed", [*SEEDS[:1], *(pytest.param(s, marks=pytest.mark.chaos) for s in SEEDS[1:])]
)
async def test_sessions_agree_with_a_model_under_random_sequences(
    seed: int,
    stack: Stack,  # noqa: F811
    client: SessionsClient,
    projection: Projection,
    settings: JetsourceSettings,
    unique: str,
    tmp_path: Path,
) -> None:
    async with SdkObserver(f"127.0.0.1:{stack.observer.port}", source="model") as sdk:
        run = Run(seed, stack, client, sdk, settings, unique, tmp_path)
        await run.run(STEPS)
    assert any(s.pruned for s in run.sessions.values()), "no prune happened"
    # The models after all this equal a rebuild from the stream.
    await rebuilt_equals_live(projection)
