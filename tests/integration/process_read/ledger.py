"""Test helpers of the process read side: a process domain on a stream of its own,
a writer that appends canonical events with the ledger's envelope mapping (process_seq
by optimistic concurrency on the process's subjects, dedupe by event id), random
process forests, and an independent fold of the log (what the models must equal).

The writer publishes the envelope itself (``process.events.<process_id>.<event_type>``,
aggregate_version = process_seq, parent_aggregate_id = parent_process_id, payload =
ProcessEventBody), as the observer does, so these tests do not depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NotFoundError

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.clock import to_timestamp
from jetsource.core.codec import EventRegistry
from jetsource.core.envelope import RecordedEvent
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
from jetsource.domains.process.models import MODELS
from jetsource.domains.process.models.common import body_of
from jetsource.projection.admin import unacknowledged
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import Domain, DomainRegistry
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings

ERR_WRONG_LAST_SEQUENCE = 10071


def process_domain(unique: str) -> Domain:
    return Domain(
        name="process",
        stream=f"PR_{unique}",
        subject_prefix=f"pr{unique}.events",
        aggregate_type="process",
        registry=EventRegistry(),
        models=MODELS,
    )


@contextlib.asynccontextmanager
async def own_ledger(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    """A projection of the process domain on a stream of its own (its models dropped
    after): no projector runs until a test applies a model with ``apply_model``."""
    domain = dataclasses.replace(
        PROCESS_DOMAIN, stream=f"PR_{unique}", subject_prefix=f"pr{unique}.events"
    )
    p = await open_projection(
        projector_settings(settings, unique), domains=DomainRegistry([domain])
    )
    try:
        yield p
    finally:
        for name in MODELS:
            await p.model(name, 1).drop()
        await p.close()


async def apply_model(p: Projection, name: str) -> None:
    """Apply one model (version 1) up to the stream's end, then stop."""
    await p.control.ensure(name, 1)
    worker = Worker(p.nc, p.store_for(name), p.model(name, 1), p.dead_letters, p.settings.projector)
    await worker.run(until_caught_up=True)


@dataclass
class Ev:
    """A canonical event to record."""

    process_id: str
    event_type: str
    data: dict[str, Any] = field(default_factory=dict)
    parent: str = ""
    occurred_ns: int = 0
    causation_id: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    event_id: str = field(default_factory=uuid7)


class Writer:
    """Appends events of one process at a time, assigning process_seq by optimistic
    concurrency; a conflict is retried with the new tail, a duplicate event id is
    reported as such (nothing appended)."""

    def __init__(self, nc: NATS, domain: Domain) -> None:
        self.js = nc.jetstream()
        self.domain = domain
        self.appended = 0
        self.duplicates = 0

    async def _tail(self, process_id: str) -> tuple[int, int]:
        subject = f"{self.domain.subject_prefix}.{process_id}.>"
        try:
            msg = await self.js.get_last_msg(self.domain.stream, subject)
        except NotFoundError:
            return 0, 0
        env = EventEnvelope.FromString(msg.data or b"")
        return env.aggregate_version, int(msg.seq or 0)

    async def record(self, ev: Ev, *, lose_ack: bool = False) -> tuple[int, int]:
        """Returns (global_seq, process_seq) of the append (0, 0 for a duplicate)."""
        body = ProcessEventBody(attributes=ev.attributes)
        body.data.CopyFrom(json_format.ParseDict(ev.data, Struct()))
        for _ in range(200):
            version, seq = await self._tail(ev.process_id)
            env = EventEnvelope(
                event_id=ev.event_id,
                event_type=ev.event_type,
                schema_version=1,
                aggregate_type="process",
                aggregate_id=ev.process_id,
                aggregate_version=version + 1,
                parent_aggregate_id=ev.parent,
                causation_id=ev.causation_id,
                source="test",
                payload=body.SerializeToString(deterministic=True),
            )
            if ev.occurred_ns:
                env.occurred_at.CopyFrom(to_timestamp(ev.occurred_ns))
            prefix = f"{self.domain.subject_prefix}.{ev.process_id}"
            headers = {
                "Nats-Msg-Id": ev.event_id,
                "Nats-Expected-Last-Subject-Sequence": str(seq),
                "Nats-Expected-Last-Subject-Sequence-Subject": f"{prefix}.>",
            }
            try:
                ack = await self.js.publish(
                    f"{prefix}.{ev.event_type}",
                    env.SerializeToString(deterministic=True),
                    headers=headers,
                    timeout=5,
                )
            except APIError as exc:
                if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                    await asyncio.sleep(random.random() * 0.005)
                    continue
                raise
            if ack.duplicate:
                self.duplicates += 1
                return 0, 0
            self.appended += 1
            if lose_ack:  # the caller never heard: it tries again, same event id
                return await self.record(ev)
            return int(ack.seq), version + 1
        raise AssertionError(f"{ev.process_id}: 200 conflicts in a row")


async def caught_up(p: Projection, models: Sequence[str], last: int) -> tuple[bool, Any]:
    """Every model's checkpoint at ``last`` and nothing left unacknowledged: a
    checkpoint is the highest sequence applied, not the lowest still due, so events
    that waited (a gap, a redelivery after a kill) may be due below it. Returns
    (caught up, what was seen) for an assertion's message."""
    cps = [(await p.model(m, 1).checkpoint()).seq for m in models]
    lags = [await unacknowledged(p, m, 1) for m in models]
    return min(cps) >= last and all(lag == 0 for lag in lags), (cps, last, lags)


async def forget_consumers(nc: NATS, stream: str) -> None:
    """The process models' durable consumers on a shared stream (PROCESS_EVENTS, whose
    name the observer does not let a test change) are named by model, not by the
    test's prefix: a test's fresh models must not start where another test's stopped."""
    js = nc.jetstream()
    for model in MODELS:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, f"jetsource-{model}-v1")


# -- random forests -------------------------------------------------------------------


def forest(rng: random.Random, roots: int, fanout: int, depth: int) -> dict[str, str]:
    """process id -> parent id ('' for roots)."""
    parents: dict[str, str] = {}
    frontier = []
    for r in range(roots):
        pid = f"r{r}"
        parents[pid] = ""
        frontier.append((pid, 0))
    while frontier:
        pid, d = frontier.pop()
        if d >= depth:
            continue
        for k in range(rng.randint(1 if d < 2 else 0, fanout)):
            child = f"{pid}-{k}"
            parents[child] = pid
            frontier.append((child, d + 1))
    return parents


def histories(rng: random.Random, parents: dict[str, str], base_ns: int) -> dict[str, list[Ev]]:
    """Per process: process_started, a few events (some caused by other processes'
    events), and usually an ending."""
    out: dict[str, list[Ev]] = {}
    ids: list[str] = []
    for i, (pid, parent) in enumerate(sorted(parents.items())):
        t = base_ns + i * 1_000_000
        evs = [
            Ev(
                pid,
                "process_started",
                {"kind": rng.choice(["agent", "tool", "pipeline"]), "name": f"run {pid}"},
                parent=parent,
                occurred_ns=t,
                attributes={"team": rng.choice(["a", "b"])},
            )
        ]
        for k in range(rng.randint(0, 4)):
            cause = rng.choice(ids) if ids and rng.random() < 0.4 else ""
            evs.append(
                Ev(
                    pid,
                    rng.choice(["step_done", "tool_called", "level_started"]),
                    {"k": k},
                    occurred_ns=t + (k + 1) * 1000,
                    causation_id=cause,
                )
            )
        ending = rng.random()
        if ending < 0.5:
            evs.append(Ev(pid, "process_completed", occurred_ns=t + 10_000))
        elif ending < 0.65:
            evs.append(
                Ev(
                    pid,
                    "process_failed",
                    {"error": {"code": 3, "msg": "boom"}},
                    occurred_ns=t + 10_000,
                )
            )
        elif ending < 0.75:
            evs.append(Ev(pid, "process_cancelled", occurred_ns=t + 10_000))
        ids.extend(e.event_id for e in evs)
        out[pid] = evs
    return out


# -- the independent fold ---------------------------------------------------------------

ENDINGS = {
    "process_completed": "completed",
    "process_failed": "failed",
    "process_cancelled": "cancelled",
    "process_interrupted": "interrupted",
}


def fold(log: Sequence[RecordedEvent]) -> dict[str, dict[str, Any]]:
    """The registry as the log says, event by event in global order."""
    procs: dict[str, dict[str, Any]] = {}
    linked: dict[str, str] = {}  # child -> parent, once both exist
    declared: dict[str, str] = {}

    def kids(pid: str) -> list[str]:
        return sorted((c for c, q in linked.items() if q == pid), key=lambda c: procs[c]["first"])

    def below(pid: str) -> list[str]:
        out, todo = [], kids(pid)
        while todo:
            c = todo.pop(0)
            out.append(c)
            todo.extend(kids(c))
        return out

    def top(pid: str) -> str:
        while pid in linked:
            pid = linked[pid]
        return pid

    for e in log:
        env = e.envelope
        pid = e.aggregate_id
        body = body_of(e)
        data = json_format.MessageToDict(body.data) if body.HasField("data") else {}
        occ = env.occurred_at.ToNanoseconds() if env.HasField("occurred_at") else None
        if pid not in procs:
            procs[pid] = {
                "first": e.stream_seq,
                "first_rec": e.recorded_at_ns,
                "count": 0,
                "status": "running",
                "kind": "",
                "name": "",
                "started_at": None,
                "ended_at": None,
                "error": None,
                "attributes": {},
            }
            for c, q in declared.items():
                if q == pid and c not in linked and top(pid) != c:
                    linked[c] = pid
        parent = env.parent_aggregate_id
        if parent and parent != pid and pid not in declared:
            declared[pid] = parent
            if parent in procs and top(parent) != pid:
                linked[pid] = parent
        p = procs[pid]
        p["count"] += 1
        p["last_type"], p["last_seq"], p["last_rec"] = e.event_type, e.version, e.recorded_at_ns
        if e.event_type == "process_started":
            p["kind"] = data.get("kind") or p["kind"]
            p["name"] = data.get("name") or p["name"]
            p["started_at"] = occ if occ is not None else p["started_at"]
            p["attributes"] = dict(body.attributes)
        if e.event_type in ENDINGS:
            p["status"], p["ended_at"] = ENDINGS[e.event_type], occ
            p["error"] = data.get("error") if e.event_type == "process_failed" else None
            for c in below(pid):
                if procs[c]["status"] == "running":
                    procs[c]["status"], procs[c]["ended_at"] = "interrupted", occ

    for pid, p in procs.items():
        p["parent"] = linked.get(pid, "")
        p["declared"] = declared.get(pid, "")
        p["root"] = top(pid)
        depth, x = 0, pid
        while x in linked:
            depth, x = depth + 1, linked[x]
        p["depth"] = depth
        p["children"] = kids(pid)
    return procs


def registry_view(row: Any) -> dict[str, Any]:
    """A ProcessRow in the fold's terms."""
    return {
        "first": row.first_global_seq,
        "first_rec": row.first_recorded_at,
        "count": row.event_count,
        "status": row.status,
        "kind": row.kind,
        "name": row.name,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "error": json.loads(row.error) if row.error else None,
        "attributes": row.attributes,
        "last_type": row.last_event_type,
        "last_seq": row.last_process_seq,
        "last_rec": row.last_recorded_at,
        "parent": row.parent,
        "declared": row.declared,
        "root": row.root,
        "depth": row.depth,
        "children": row.children,
    }
