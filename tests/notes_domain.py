"""A small throwaway domain for tests: its own stream and events, one Valkey model
and one graph model, built only on the engine's public pieces (no engine module
knows it). Shows that a domain is a plug-in.

Events (protobuf wrappers, registered under names of this domain): ``NoteAdded``
(a string) and ``NoteStarred`` (a bool). The Valkey model ``notes`` keeps per
aggregate the note count, the starred count and the last text; the graph model
``notes_graph`` keeps one node per aggregate with the same counts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from jetsource.core.codec import EventRegistry, UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.projection.bootstrap import ModelEnv
from jetsource.projection.contract import Checkpoint, Kind, ModelSpec, Outcome, ReadModel
from jetsource.projection.domain import Domain, ModelDecl
from jetsource.projection.graph import graph_io
from jetsource.projection.valkey import (
    CHECKPOINT_LUA,
    ValkeyModel,
    group,
    next_versions,
    valkey_io,
)

NOTES, NOTES_GRAPH = "notes", "notes_graph"

registry = EventRegistry()
registry.register("NoteAdded", 1, wrappers_pb2.StringValue)
registry.register("NoteStarred", 1, wrappers_pb2.BoolValue)


def note_history(aggregate_id: str, n: int, seed: int = 0) -> list[Message]:
    out: list[Message] = []
    for i in range(n):
        if (i + seed) % 3 == 2:
            out.append(wrappers_pb2.BoolValue(value=(i + seed) % 2 == 0))
        else:
            out.append(wrappers_pb2.StringValue(value=f"{aggregate_id} note {i} [x]"))
    return out


def fold_notes(state: dict[str, Any], event: Message | UnknownEvent) -> dict[str, Any]:
    out = dict(state)
    if isinstance(event, wrappers_pb2.StringValue):
        out["notes"] = out.get("notes", 0) + 1
        out["last"] = event.value
    elif isinstance(event, wrappers_pb2.BoolValue):
        out["starred"] = out.get("starred", 0) + (1 if event.value else 0)
    return out


_APPLY = (
    """
local p, n = ARGV[1], tonumber(ARGV[2])
local applied, maxseq, i = 0, 0, 3
for _ = 1, n do
  local id, base, ver, seq, doc = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2]),
    tonumber(ARGV[i+3]), ARGV[i+4]
  i = i + 5
  local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
  if cur == base then
    redis.call('SET', p .. ':doc:' .. id, doc)
    redis.call('HSET', p .. ':pos', id, ver)
    applied = applied + (ver - base)
    if seq > maxseq then maxseq = seq end
  end
end
"""
    + CHECKPOINT_LUA
    + """
return applied
"""
)


class NotesModel(ValkeyModel):
    """Per aggregate ``doc:<id>`` = {notes, starred, last}, applied in version order."""

    def __init__(self, spec: ModelSpec, env: ModelEnv) -> None:
        super().__init__(spec, env.redis, env.options.valkey_prefix)
        self._apply = self.redis.register_script(_APPLY)

    async def setup(self) -> None:
        pass

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        args: list[Any] = []
        seqs: list[int] = []
        for aggregate_id, evs in group(events).items():
            raw = await valkey_io(self.redis.get(f"{self.ns}:doc:{aggregate_id}"))
            state = json.loads(raw) if raw else {}
            base = await self.position(aggregate_id)
            fresh = next_versions(base, evs, outcome)
            if not fresh:
                continue
            for e in fresh:
                state = fold_notes(state, e.event)
            doc = json.dumps(state, sort_keys=True)
            args += [aggregate_id, base, fresh[-1].version, fresh[-1].stream_seq, doc]
            seqs += [e.stream_seq for e in fresh]
        if args:
            applied = await valkey_io(self._apply(args=[self.ns, len(args) // 5, *args]))
            outcome.applied = int(applied)
            outcome.done.extend(seqs)
        return outcome

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        return False

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        raise NotImplementedError


class NotesGraphModel:
    """One ``<prefix>Note_v<version>`` node per aggregate, guarded by its version, and
    a checkpoint node, in one transaction per batch."""

    def __init__(self, spec: ModelSpec, env: ModelEnv) -> None:
        self.spec = spec
        self.driver = env.graph
        self.database = env.settings.graph.database
        prefix = env.options.graph_label_prefix
        self.label = f"{prefix}Note_v{spec.version}"
        self.cp_label = f"{prefix}NoteCheckpoint_v{spec.version}"

    async def setup(self) -> None:
        pass

    async def position(self, aggregate_id: str) -> int:
        async with self.driver.session(database=self.database) as session:
            result = await graph_io(
                session.run(
                    f"MATCH (n:{self.label} {{key: $key}}) RETURN n.version AS v", key=aggregate_id
                )
            )
            record = await result.single()
            return int(record["v"]) if record else 0

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        rows = []
        seqs: list[int] = []
        for aggregate_id, evs in group(events).items():
            node = await self._node(aggregate_id)
            base = int(node.get("version", 0))
            fresh = next_versions(base, evs, outcome)
            if not fresh:
                continue
            state: dict[str, Any] = {k: node[k] for k in ("notes", "starred", "last") if k in node}
            for e in fresh:
                state = fold_notes(state, e.event)
            rows.append(
                {
                    "key": aggregate_id,
                    "base": base,
                    "version": fresh[-1].version,
                    "notes": state.get("notes", 0),
                    "starred": state.get("starred", 0),
                    "last": state.get("last", ""),
                    "n": len(fresh),
                }
            )
            seqs += [e.stream_seq for e in fresh]
        if not rows:
            return outcome
        maxseq = max(seqs)

        async def work(tx: Any) -> int:
            result = await tx.run(
                f"UNWIND $rows AS row MERGE (n:{self.label} {{key: row.key}}) "
                "WITH n, row WHERE coalesce(n.version, 0) = row.base "
                "SET n.version = row.version, n.notes = row.notes, n.starred = row.starred, "
                "n.last = row.last RETURN sum(row.n) AS applied",
                rows=rows,
            )
            record = await result.single()
            applied = int(record["applied"] or 0) if record else 0
            await tx.run(
                f"MERGE (c:{self.cp_label} {{key: 'checkpoint'}}) "
                "SET c.seq = CASE WHEN coalesce(c.seq, 0) < $seq THEN $seq ELSE c.seq END, "
                "c.applied = coalesce(c.applied, 0) + $applied",
                seq=maxseq,
                applied=applied,
            )
            return applied

        async with self.driver.session(database=self.database) as session:
            outcome.applied = await graph_io(session.execute_write(work))
        outcome.done.extend(seqs)
        return outcome

    async def _node(self, aggregate_id: str) -> dict[str, Any]:
        async with self.driver.session(database=self.database) as session:
            result = await graph_io(
                session.run(f"MATCH (n:{self.label} {{key: $key}}) RETURN n", key=aggregate_id)
            )
            record = await result.single()
            return dict(record["n"]) if record else {}

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        return False

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        raise NotImplementedError

    async def checkpoint(self) -> Checkpoint:
        async with self.driver.session(database=self.database) as session:
            result = await graph_io(
                session.run(f"MATCH (c:{self.cp_label}) RETURN c.seq AS seq, c.applied AS applied")
            )
            record = await result.single()
        if record is None:
            return Checkpoint(0, 0)
        return Checkpoint(int(record["seq"] or 0), int(record["applied"] or 0))

    async def digest(self) -> str:
        async with self.driver.session(database=self.database) as session:
            result = await graph_io(
                session.run(
                    f"MATCH (n:{self.label}) RETURN n.key AS key, n.version AS version, "
                    "n.notes AS notes, n.starred AS starred, n.last AS last ORDER BY key"
                )
            )
            rows = [tuple(r.values()) async for r in result]
        applied = (await self.checkpoint()).applied
        return hashlib.sha256(repr((rows, applied)).encode()).hexdigest()

    async def drop(self) -> int:
        async with self.driver.session(database=self.database) as session:
            result = await session.run(
                f"MATCH (n) WHERE n:{self.label} OR n:{self.cp_label} DETACH DELETE n "
                "RETURN count(*) AS c"
            )
            record = await result.single()
            return int(record["c"]) if record else 0

    async def close(self) -> None:
        pass


def _notes(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    return NotesModel(spec, env)


def _notes_graph(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    return NotesGraphModel(spec, env)


def notes_domain(unique: str) -> Domain:
    return Domain(
        name="notes",
        stream=f"NOTES_{unique}",
        subject_prefix=f"notes{unique}.events",
        aggregate_type="note",
        registry=registry,
        models={
            NOTES: ModelDecl(
                lambda v: ModelSpec(NOTES, v, Kind.SNAPSHOT, "valkey", "notes per aggregate"),
                _notes,
            ),
            NOTES_GRAPH: ModelDecl(
                lambda v: ModelSpec(
                    NOTES_GRAPH, v, Kind.AGGREGATE, "graph", "a node per aggregate"
                ),
                _notes_graph,
            ),
        },
        sample_history=note_history,
    )
