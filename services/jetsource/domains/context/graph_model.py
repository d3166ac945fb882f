"""The graph read model (Neo4j 5 in production, ArcadeDB's Bolt plugin locally).

Nodes: Story, Decision, Subtask; relationships HAS_DECISION, HAS_SUBTASK,
DEPENDS_ON, SUPERSEDES, AFFECTS. Labels carry the model version (``Story_v1``) so
two versions live side by side. One transaction per batch: the Story node is the
guard (its ``version`` must be the one the batch was computed from; it is locked
by the first write), every other node is guarded by its last stream sequence, and a
Checkpoint node moves in the same transaction.

The node properties are computed by folding the events with the domain's own
``evolve`` (states are cached; a cold story is folded from the event store up to the
version its Story node holds), so the graph never disagrees with the domain.

A batch costs what it changed, not the story's size: only the nodes the fold put
(which its events name) are compared and written, only the dependencies its events
link are looked at (no event removes a node or a dependency, and every other node is
the same object as before the fold).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from neo4j import AsyncDriver, AsyncManagedTransaction

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.crypto import ErasureWatch, erasures_heard
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.context.history import FoldCache, history_up_to
from jetsource.domains.context.model import ContextState, Decision, Subtask
from jetsource.domains.context.model import fold as fold_state
from jetsource.domains.context.serialize import decision_to_dict, subtask_to_dict
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.eventstore.port import EventStore
from jetsource.projection.contract import Checkpoint, Kind, ModelSpec, Outcome
from jetsource.projection.graph import GraphMark, graph_io, graph_run
from jetsource.projection.valkey import group, may_repeat, next_versions, skipped

GRAPH = "graph"
_Node = TypeVar("_Node", Decision, Subtask)


def graph_spec(version: int) -> ModelSpec:
    return ModelSpec(
        GRAPH,
        version,
        Kind.AGGREGATE,
        "graph",
        "stories, decisions, subtasks and their relationships",
        notes="Story.version must equal the batch's base version; nodes guarded by seq",
    )


@dataclass
class _Writes:
    stories: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    subtasks: list[dict[str, Any]] = field(default_factory=list)
    # (relationship, from label, to label) -> rows {story, a, b}
    edges: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def edge(self, rel: str, a_label: str, b_label: str, story: str, a: str, b: str) -> None:
        self.edges.setdefault((rel, a_label, b_label), []).append(
            {"story": story, "a": f"{story}/{a}", "b": f"{story}/{b}"}
        )


class GraphModel:
    def __init__(
        self,
        spec: ModelSpec,
        driver: AsyncDriver,
        database: str,
        store: EventStore,
        cache_size: int,
        label_prefix: str = "",
    ) -> None:
        self.spec = spec
        self.driver = driver
        self.database = database
        self.store = store
        self.cache_size = cache_size
        v, x = spec.version, label_prefix
        self.prefix = x
        self.story, self.decision = f"{x}Story_v{v}", f"{x}Decision_v{v}"
        self.subtask, self.checkpoint_label = f"{x}Subtask_v{v}", f"{x}Checkpoint_v{v}"
        self.mark = GraphMark(driver, database, self.checkpoint_label, spec.name)
        self._cache: OrderedDict[str, tuple[int, ContextState]] = OrderedDict()
        self._folds = FoldCache()  # replay: a hot story's history folded once
        self._erasures = ErasureWatch()  # an erasure empties both

    def _label(self, state: ContextState, node_id: str) -> str:
        return self.decision if node_id in state.decisions else self.subtask

    async def setup(self) -> None:
        async with self.driver.session(database=self.database) as session:
            for label in (self.story, self.decision, self.subtask):
                await graph_run(
                    session,
                    f"CREATE CONSTRAINT {label.lower()}_key IF NOT EXISTS "
                    f"FOR (n:{label}) REQUIRE n.key IS UNIQUE",
                )
            for label in (self.decision, self.subtask):
                await graph_run(
                    session,
                    f"CREATE INDEX {label.lower()}_story IF NOT EXISTS "
                    f"FOR (n:{label}) ON (n.story)",
                )

    # -- state ------------------------------------------------------------------

    def _forget_if_erased(self) -> bool:
        """States folded before an erasure may hold what now reads "<erased>" (True:
        an erasure was heard of since the last call, and both were emptied)."""
        if not self._erasures.moved():
            return False
        self._cache.clear()
        self._folds = FoldCache()
        return True

    async def _load(self, ids: Sequence[str]) -> dict[str, tuple[int, ContextState]]:
        """(stored seq, state) per story: from the cache, else folded from the store
        up to the version the Story node holds."""
        self._forget_if_erased()
        out = {i: self._cache[i] for i in ids if i in self._cache}
        missing = [i for i in ids if i not in out]
        if missing:
            async with self.driver.session(database=self.database) as session:
                result = await graph_run(
                    session,
                    f"MATCH (s:{self.story}) WHERE s.key IN $keys "
                    "RETURN s.key AS key, s.version AS version, s.seq AS seq",
                    keys=missing,
                )
                stored = {r["key"]: (r["version"] or 0, r["seq"] or 0) async for r in result}
            for i in missing:
                version, seq = stored.get(i, (0, 0))
                events = await self.store.read_aggregate(i, to_version=version) if version else []
                state = fold_state((e.event for e in events), context_id=i)
                # The node's sequence is the one its version was applied from (a
                # discarded dead letter's stand-in included), which the stream's
                # event at that version need not be.
                out[i] = (int(seq) or (events[-1].stream_seq if events else 0), state)
        return out

    async def _refused(self, ids: Sequence[str]) -> dict[str, frozenset[int]]:
        """The sequences refused before (a second event for a version applied
        already), of the stories named: read only when a batch repeats a version."""
        if not ids:
            return {}
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (s:{self.story}) WHERE s.key IN $keys "
                "RETURN s.key AS key, s.refused AS refused",
                keys=list(ids),
            )
            return {r["key"]: frozenset(int(x) for x in r["refused"] or []) async for r in result}

    async def _remember_refused(self, refusals: list[dict[str, Any]]) -> None:
        """Each sequence refused once in its Story node's ``refused``: the runtime
        retries a refused event with backoff, and once a later event of the story is
        applied meanwhile, the retry would look like a redelivery. After the batch's
        write (a refusal in the same call as a story's first events needs the node it
        creates)."""
        async with self.driver.session(database=self.database) as session:
            await graph_run(
                session,
                f"UNWIND $rows AS r MATCH (s:{self.story} {{key: r.key}}) "
                "WITH s, r WHERE NOT r.seq IN coalesce(s.refused, []) "
                "SET s.refused = coalesce(s.refused, []) + r.seq",
                rows=refusals,
            )

    def _remember(self, story: str, seq: int, state: ContextState) -> None:
        if self.cache_size == 0:
            return
        self._cache[story] = (seq, state)
        self._cache.move_to_end(story)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- writes -----------------------------------------------------------------

    def _diff(
        self,
        writes: _Writes,
        old: ContextState,
        new: ContextState,
        events: Sequence[RecordedEvent],
        put: tuple[Collection[str], Collection[str]] | None = None,
    ) -> None:
        """Rows for what changed from ``old`` to ``new``, and for every node an event
        names. Each node carries the stream sequence of the last event that named it:
        the same however the events were batched (a node written only when it changed
        would keep the sequence of whichever event of its batch came last, and an
        event that names a node without changing it, such as a repeated subtask
        update, would count in one batching and not in another).

        ``put``: the decisions and subtasks the fold from ``old`` to ``new`` put
        (every other node of ``new`` is the same object as in ``old``, and no node or
        dependency is removed): only those and the nodes the events name are
        compared, and only the dependencies the events link, so the work follows
        the batch, not the story. None: every node and dependency is compared."""
        sid = new.id
        last = events[-1]
        seq, count, recorded_at = last.stream_seq, len(events), last.recorded_at_ns
        touched: dict[str, int] = {}
        for e in events:
            node = getattr(e.event, "decision_id", "") or getattr(e.event, "subtask_id", "")
            if node:
                touched[node] = e.stream_seq
        writes.stories.append(
            {
                "key": sid,
                "base": old.version,
                "version": new.version,
                "seq": seq,
                "n": count,
                "props": {
                    "title": new.title,
                    "description": new.description,
                    "created_by": new.created_by,
                    "tags": list(new.tags),
                    "status": "closed" if new.closed else "open",
                    "close_reason": new.close_reason,
                    "updated_at": recorded_at,
                },
            }
        )
        decisions: Iterable[Decision] = new.decisions.values()
        subtasks: Iterable[Subtask] = new.subtasks.values()
        links: Iterable[tuple[str, str]]
        if put is None:
            links = new.dependencies - old.dependencies
        else:
            decisions = _nodes(new.decisions, put[0], touched)
            subtasks = _nodes(new.subtasks, put[1], touched)
            links = _links(old.dependencies, new.dependencies, events)
        for d in decisions:
            before = old.decisions.get(d.id)
            if before == d and d.id not in touched:
                continue
            writes.decisions.append(_decision_row(sid, d, touched.get(d.id, seq)))
            if before is None:
                writes.edge("HAS_DECISION", self.story, self.decision, sid, "", d.id)
                for target in d.affects:
                    writes.edge(
                        "AFFECTS", self.decision, self._label(new, target), sid, d.id, target
                    )
            if d.superseded_by and (before is None or not before.superseded_by):
                writes.edge("SUPERSEDES", self.decision, self.decision, sid, d.superseded_by, d.id)
        for t in subtasks:
            before_t = old.subtasks.get(t.id)
            if before_t == t and t.id not in touched:
                continue
            writes.subtasks.append(_subtask_row(sid, t, touched.get(t.id, seq)))
            if before_t is None:
                writes.edge("HAS_SUBTASK", self.story, self.subtask, sid, "", t.id)
        for a, b in links:
            writes.edge("DEPENDS_ON", self._label(new, a), self._label(new, b), sid, a, b)

    async def _write(self, writes: _Writes, max_seq: int) -> dict[str, int]:
        """One transaction; returns the stories whose guard held (the rest conflicted)
        with the number of events the transaction applied to each: what it added to
        the checkpoint's ``applied``, as the database reported it."""

        await self.mark.expect()

        async def work(tx: AsyncManagedTransaction) -> dict[str, int]:
            await self.mark.check(tx)  # nothing into a store emptied since
            result = await tx.run(
                f"UNWIND $rows AS r MERGE (s:{self.story} {{key: r.key}}) "
                "ON CREATE SET s.version = 0, s.applied = 0 "
                "SET s.version = s.version "  # takes the node's write lock before the check
                "WITH s, r WHERE s.version = r.base "
                "SET s += r.props, s.version = r.version, s.seq = r.seq, "
                "s.applied = s.applied + r.n "
                "RETURN s.key AS key, r.n AS n",
                rows=writes.stories,
            )
            ok = {r["key"]: int(r["n"]) async for r in result}
            if not ok:
                return ok
            await self._write_nodes(tx, writes, set(ok))
            await self._move_checkpoint(tx, sum(ok.values()), max_seq)
            return ok

        async with self.driver.session(database=self.database) as session:
            return await graph_io(
                session.execute_write(work),
                session=session,
                database=self.database,
                driver=self.driver,
            )

    async def _write_nodes(
        self, tx: AsyncManagedTransaction, writes: _Writes, ok: set[str]
    ) -> None:
        """Decision and Subtask nodes (each guarded by its last sequence) and the
        relationships of the stories in ``ok``."""
        for label, rows in ((self.decision, writes.decisions), (self.subtask, writes.subtasks)):
            rows = [r for r in rows if r["story"] in ok]
            if rows:
                await tx.run(
                    f"UNWIND $rows AS r MERGE (n:{label} {{key: r.key}}) "
                    "WITH n, r WHERE coalesce(n.seq, 0) < r.seq "
                    "SET n += r.props, n.seq = r.seq, n.story = r.story",
                    rows=rows,
                )
        for (rel, a_label, b_label), edge_rows in writes.edges.items():
            rows = [r for r in edge_rows if r["story"] in ok]
            if not rows:
                continue
            # From the Story node, the pattern is written from the other end: the
            # store may look for the relationship among the edges of the node the
            # pattern starts from, and a large story's node has one per node of it.
            merge = f"MERGE (a)-[:{rel}]->(b)"
            a_match = f"(a:{a_label} {{key: r.a}})"
            if a_label == self.story:
                merge = f"MERGE (b)<-[:{rel}]-(a)"
                a_match = f"(a:{a_label} {{key: r.story}})"
            await tx.run(
                f"UNWIND $rows AS r MATCH {a_match} MATCH (b:{b_label} {{key: r.b}}) {merge}",
                rows=rows,
            )

    async def _move_checkpoint(self, tx: AsyncManagedTransaction, applied: int, seq: int) -> None:
        await tx.run(
            f"MERGE (c:{self.checkpoint_label} {{model: $model}}) "
            "ON CREATE SET c.seq = 0, c.applied = 0 "
            "SET c.applied = c.applied + $applied "
            "WITH c WHERE c.seq < $seq SET c.seq = $seq",
            model=self.spec.name,
            applied=applied,
            seq=seq,
        )

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        groups = group(events)
        heard = erasures_heard()  # states folded from here on may be remembered
        loaded = await self._load(list(groups))
        writes = _Writes()
        pending: dict[str, tuple[int, ContextState, list[int]]] = {}
        # A version applied already, from at or below the sequence it was applied
        # from: a redelivery unless refused before (read only then).
        refused = await self._refused(
            [i for i, evs in groups.items() if may_repeat(loaded[i][1].version, loaded[i][0], evs)]
        )
        refusals: list[dict[str, Any]] = []
        for story, evs in groups.items():
            last_seq, state = loaded[story]
            known = refused.get(story, frozenset())
            fresh = next_versions(state.version, evs, outcome, last_seq, known)
            refusals += [
                {"key": story, "seq": e.stream_seq}
                for e in evs
                if e.stream_seq in outcome.failed and e.stream_seq not in known
            ]
            if not fresh:
                continue
            new, fresh, put, _ = ContextModel._fold_touched(state, fresh, outcome)
            if not fresh:
                continue
            self._diff(writes, state, new, fresh, put)
            pending[story] = (fresh[-1].stream_seq, new, [e.stream_seq for e in fresh])
        ok: dict[str, int] = {}
        if pending:
            ok = await self._write(writes, max(seq for seq, _, _ in pending.values()))
        if refusals:
            await self._remember_refused(refusals)
        for story, (seq, state, seqs) in pending.items():
            if story in ok:
                if heard == erasures_heard():
                    self._remember(story, seq, state)
                else:  # an erasure heard meanwhile: the state may hold opened values
                    self._cache.pop(story, None)
                outcome.done.extend(seqs)
                outcome.applied += ok[story]  # as the transaction counted it
            else:
                self._cache.pop(story, None)
                for s in seqs:
                    outcome.waiting[s] = "the stored version moved; recomputing"
        return outcome

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        _, state = (await self._load([aggregate_id]))[aggregate_id]
        placeholder = skipped(aggregate_id, state.version + 1, stream_seq, 0)
        return stream_seq in (await self.apply([placeholder])).done

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        """Write the story's subgraph as it is at ``to_version`` (folded from its
        events, kept across calls: ``events`` if given, its first ``to_version``
        events, else read from the store), in one transaction: the Story node is
        locked, its Decision and Subtask nodes are deleted and written back, the
        counts move with it. With ``guard`` (low, high) nothing is written unless
        the stored version is within it. Returns the version the story was at (0: absent)."""
        heard = erasures_heard()  # events read from here on may be kept folded
        events = await history_up_to(self.store, aggregate_id, to_version, events)
        # An erasure first heard here may be younger than events the caller read: the
        # fold is not kept (nor one of events read while an erasure was heard).
        erased = self._forget_if_erased()
        state = self._folds.state_at(
            aggregate_id, events, to_version, heard=None if erased else heard
        )
        writes = _Writes()
        if events:
            self._diff(writes, ContextState(id=aggregate_id), state, events)
        props = writes.stories[0]["props"] if writes.stories else {}
        last_seq = events[-1].stream_seq if events else 0
        self._cache.pop(aggregate_id, None)

        await self.mark.expect()

        async def work(tx: AsyncManagedTransaction) -> int:
            await self.mark.check(tx)
            # The Story node's write lock first (as every batch takes it), then the check.
            result = await tx.run(
                f"MATCH (s:{self.story} {{key: $key}}) SET s.version = s.version "
                "RETURN s.version AS v",
                key=aggregate_id,
            )
            record = await result.single()
            current = int(record["v"] or 0) if record else 0
            if guard is not None and not guard[0] <= current <= guard[1]:
                return current
            for label in (self.decision, self.subtask):
                await tx.run(f"MATCH (n:{label} {{story: $key}}) DETACH DELETE n", key=aggregate_id)
            if to_version == 0:
                await tx.run(
                    f"MATCH (s:{self.story} {{key: $key}}) DETACH DELETE s", key=aggregate_id
                )
            else:
                await tx.run(
                    f"MERGE (s:{self.story} {{key: $key}}) "
                    "SET s += $props, s.version = $version, s.seq = $seq, s.applied = $version",
                    key=aggregate_id,
                    props=props,
                    version=to_version,
                    seq=last_seq,
                )
                await self._write_nodes(tx, writes, {aggregate_id})
            await self._move_checkpoint(tx, to_version - current, last_seq)
            return current

        async with self.driver.session(database=self.database) as session:
            previous = await graph_io(
                session.execute_write(work),
                session=session,
                database=self.database,
                driver=self.driver,
            )
        self._cache.pop(aggregate_id, None)
        return previous

    async def birth_mark(self) -> str | None:
        return await self.mark.stored()

    async def take_birth_mark(self) -> str:
        self._cache.clear()  # what this process wrote: an emptied store holds none of it
        self._folds = FoldCache()
        return await self.mark.take()

    async def store_lost(self) -> bool:
        return await self.mark.lost()

    async def position(self, aggregate_id: str) -> int:
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (s:{self.story} {{key: $key}}) RETURN s.version AS v",
                key=aggregate_id,
            )
            record = await result.single()
        return int(record["v"]) if record else 0

    async def checkpoint(self) -> Checkpoint:
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (c:{self.checkpoint_label} {{model: $model}}) "
                "RETURN c.seq AS seq, c.applied AS applied",
                model=self.spec.name,
            )
            record = await result.single()
        if record is None:
            return Checkpoint(0, 0)
        return Checkpoint(int(record["seq"] or 0), int(record["applied"] or 0))

    async def dump(self) -> list[tuple[str, Any]]:
        """Every node (by label and key, with its properties) and relationship, sorted."""
        out: list[tuple[str, Any]] = []
        async with self.driver.session(database=self.database) as session:
            for label in (self.story, self.decision, self.subtask):
                name = label.removeprefix(self.prefix).rsplit("_", 1)[0]
                result = await graph_run(
                    session, f"MATCH (n:{label}) RETURN n.key AS key, properties(n) AS p"
                )
                out += [(name, (r["key"], sorted(r["p"].items()))) async for r in result]
                result = await graph_run(
                    session,
                    f"MATCH (a:{label})-[r]->(b) RETURN type(r) AS t, a.key AS a, b.key AS b",
                )
                out += [("edge", (r["t"], r["a"], r["b"])) async for r in result]
        out.sort(key=repr)
        out.append(("applied", (await self.checkpoint()).applied))
        return out

    async def digest(self) -> str:
        return hashlib.sha256(repr(await self.dump()).encode()).hexdigest()

    async def size(self) -> int:
        """How many nodes the model version holds."""
        total = 0
        async with self.driver.session(database=self.database) as session:
            for label in (self.story, self.decision, self.subtask, self.checkpoint_label):
                result = await graph_run(session, f"MATCH (n:{label}) RETURN count(n) AS c")
                record = await result.single()
                total += int(record["c"]) if record else 0
        return total

    async def drop(self) -> int:
        removed = 0
        async with self.driver.session(database=self.database) as session:
            for label in (self.story, self.decision, self.subtask, self.checkpoint_label):
                while True:
                    result = await graph_run(
                        session,
                        f"MATCH (n:{label}) WITH n LIMIT 2000 DETACH DELETE n RETURN count(*) AS c",
                    )
                    record = await result.single()
                    n = int(record["c"]) if record else 0
                    removed += n
                    if n == 0:
                        break
        self._cache.clear()
        return removed

    async def close(self) -> None:
        await self.driver.close()

    async def nodes(self, story: str) -> list[tuple[str, dict[str, Any]]]:
        """The story's nodes as (kind, properties): "story", "decision", "subtask"."""
        out: list[tuple[str, dict[str, Any]]] = []
        async with self.driver.session(database=self.database) as session:
            for kind, match in (
                ("story", f"(n:{self.story} {{key: $key}})"),
                ("decision", f"(n:{self.decision} {{story: $key}})"),
                ("subtask", f"(n:{self.subtask} {{story: $key}})"),
            ):
                result = await graph_run(
                    session, f"MATCH {match} RETURN properties(n) AS p", key=story
                )
                out += [(kind, dict(r["p"])) async for r in result]
        return out

    async def neighbourhood(self, story: str) -> dict[str, Any]:
        """The story's nodes and relationships (for the CLI and tests)."""
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (s:{self.story} {{key: $key}}) RETURN properties(s) AS p",
                key=story,
            )
            record = await result.single()
            if record is None:
                return {}
            edges = []
            for match in (
                f"(a:{self.story} {{key: $key}})",
                f"(a:{self.decision} {{story: $key}})",
                f"(a:{self.subtask} {{story: $key}})",
            ):
                result = await graph_run(
                    session,
                    f"MATCH {match}-[r]->(b) RETURN type(r) AS t, a.key AS a, b.key AS b",
                    key=story,
                )
                edges += [(r["t"], r["a"], r["b"]) async for r in result]
            edges.sort()
        return {"story": dict(record["p"]), "edges": edges}


def _decision_row(story: str, d: Decision, seq: int) -> dict[str, Any]:
    props = {**decision_to_dict(d), "active": d.active}
    return {"key": f"{story}/{d.id}", "story": story, "seq": seq, "props": props}


def _subtask_row(story: str, t: Subtask, seq: int) -> dict[str, Any]:
    return {"key": f"{story}/{t.id}", "story": story, "seq": seq, "props": subtask_to_dict(t)}


def _nodes(
    nodes: Mapping[str, _Node], put: Collection[str], named: Mapping[str, int]
) -> list[_Node]:
    """The nodes of ``nodes`` a fold put or an event named (each once, in that order)."""
    keys = dict.fromkeys(put)
    keys.update(dict.fromkeys(named))
    return [nodes[k] for k in keys if k in nodes]


def _links(
    old: frozenset[tuple[str, str]],
    new: frozenset[tuple[str, str]],
    events: Sequence[RecordedEvent],
) -> list[tuple[str, str]]:
    """``new - old`` from the dependencies the events link (no event removes one):
    what the batch linked, without going through the story's every dependency. The
    whole difference should the count not add up."""
    if new is old:
        return []
    added = dict.fromkeys(
        pair
        for e in events
        if isinstance(e.event, ev.DependencyLinked)
        and (pair := (e.event.from_id, e.event.to_id)) not in old
    )
    if len(old) + len(added) != len(new) or not all(p in new for p in added):
        return list(new - old)
    return list(added)
