"""The ``process_graph`` read model (Neo4j 5 in production, ArcadeDB's Bolt plugin
locally, the same Cypher).

- ``(:Process_v1 {id})``: one node per process (and per parent named before it was
  recorded: ``version`` 0 until its first event), with ``version`` (the process_seq
  applied last), ``seq`` (the stream sequence it came from; absent on nodes
  written before it was kept: unknown, and a repeated process_seq is then taken for
  a redelivery, as it was) and ``refused`` (sequences refused as a second event for
  a version: common.PLACE_LUA says why they are remembered);
- ``(child)-[:CHILD_OF]->(parent)``: the first parent a process names;
- ``(:ProcessEvent_v1 {id, process})``: which process each event id belongs to, so a
  causation id can be resolved whenever the causing event arrives;
- ``(effect)-[:CAUSED_BY]->(cause)`` between two different processes: an event of
  ``effect`` names as ``causation_id`` an event of ``cause``. Until the causing event
  is recorded the link waits as ``(effect)-[:AWAITS]->(:ProcessEvent_v1 {id})``.

One transaction per batch: the Process node is the guard (its ``version`` must be the
process_seq the batch continues; the first write takes its lock), then the events, the
links and a checkpoint node. A process_seq applied already that comes again from a
later stream sequence is a second event for one version (the stream's readers name it
as corrupt), refused like any poison, never skipped as a redelivery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from neo4j import AsyncDriver, AsyncManagedTransaction

from jetsource.core.envelope import RecordedEvent
from jetsource.domains.process.models.common import is_noop, next_events
from jetsource.domains.process.pruning import PRUNER_ID, pruned_ids
from jetsource.projection.contract import Checkpoint, Kind, ModelSpec, Outcome, RebuildStrategy
from jetsource.projection.graph import GraphMark, graph_io, graph_run
from jetsource.projection.valkey import group, repeated_version, skipped

PROCESS_GRAPH = "process_graph"


def process_graph_spec(version: int) -> ModelSpec:
    return ModelSpec(
        PROCESS_GRAPH,
        version,
        Kind.AGGREGATE,
        "graph",
        "processes with CHILD_OF (parent) and CAUSED_BY (causation across processes) edges",
        rebuild_strategy=RebuildStrategy.SIDE_BY_SIDE,
        notes="Process.version must equal the batch's base process_seq",
    )


class ProcessGraphModel:
    def __init__(
        self, spec: ModelSpec, driver: AsyncDriver, database: str, label_prefix: str = ""
    ) -> None:
        self.spec = spec
        self.driver = driver
        self.database = database
        v, x = spec.version, label_prefix
        self.process, self.event = f"{x}Process_v{v}", f"{x}ProcessEvent_v{v}"
        self.checkpoint_label = f"{x}ProcessCheckpoint_v{v}"
        self.mark = GraphMark(driver, database, self.checkpoint_label, spec.name)
        # Processes forgotten by a process_pruned tombstone: their later events change
        # nothing (jetsource.domains.process.pruning).
        self.pruned_label = f"{x}ProcessPruned_v{v}"

    async def setup(self) -> None:
        async with self.driver.session(database=self.database) as session:
            for label in (self.process, self.event):
                await graph_run(
                    session,
                    f"CREATE CONSTRAINT {label.lower()}_id IF NOT EXISTS "
                    f"FOR (n:{label}) REQUIRE n.id IS UNIQUE",
                )
            # Every key a label is looked up by has an index (each batch asks which of
            # its processes were pruned, a prune finds its events by process): a label
            # scan grew with the label, 245 ms a batch at 128,000 pruned (4.8 indexed).
            # Plain indexes: a graph built before them takes them whatever it holds.
            for label, key in ((self.pruned_label, "id"), (self.event, "process")):
                await graph_run(
                    session,
                    f"CREATE INDEX {label.lower()}_{key} IF NOT EXISTS "
                    f"FOR (n:{label}) ON (n.{key})",
                )

    async def _versions(self, ids: Sequence[str]) -> dict[str, tuple[int, str, int, list[int]]]:
        """id -> (version, declared parent, stream sequence of the version (0: unknown),
        sequences refused)."""
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (p:{self.process}) WHERE p.id IN $ids "
                "RETURN p.id AS id, p.version AS version, p.declared AS declared, "
                "p.seq AS seq, p.refused AS refused",
                ids=list(ids),
            )
            return {
                r["id"]: (
                    int(r["version"] or 0),
                    r["declared"] or "",
                    int(r["seq"] or 0),
                    [int(s) for s in r["refused"] or []],
                )
                async for r in result
            }

    async def position(self, aggregate_id: str) -> int:
        return (await self._versions([aggregate_id])).get(aggregate_id, (0, "", 0, []))[0]

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        """Events in order; the pruner's events (tombstones) each in a transaction of
        their own, between the processes' events before and after them."""
        outcome = Outcome()
        segment: list[RecordedEvent] = []
        for e in [*events, None]:
            if e is not None and e.aggregate_id != PRUNER_ID:
                segment.append(e)
                continue
            if segment:
                part = await self._apply_processes(segment)
                outcome.applied += part.applied
                outcome.done.extend(part.done)
                outcome.waiting.update(part.waiting)
                outcome.failed.update(part.failed)
                segment = []
            if e is not None:
                await self._apply_pruner(e, outcome)
        return outcome

    async def _pruned(self, ids: Sequence[str]) -> set[str]:
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (m:{self.pruned_label}) WHERE m.id IN $ids RETURN m.id AS id",
                ids=list(ids),
            )
            return {r["id"] async for r in result}

    async def _apply_pruner(self, e: RecordedEvent, outcome: Outcome) -> None:
        """The pruner's event, if it is the next one of its aggregate (its version is
        kept on the checkpoint node): a tombstone forgets the processes it names and
        everything below them, as a rebuild from the purged stream would have them."""
        C = self.checkpoint_label
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (c:{C} {{model: $model}}) RETURN c.pruner AS v, c.pruner_seq AS s",
                model=self.spec.name,
            )
            record = await result.single()
        base = int(record["v"] or 0) if record is not None else 0
        base_seq = int(record["s"] or 0) if record is not None else 0
        if e.version <= base and base_seq and e.stream_seq > base_seq:
            outcome.failed[e.stream_seq] = repeated_version(e, base)
            return
        if e.version <= base:
            outcome.done.append(e.stream_seq)
            return
        if e.version > base + 1:
            outcome.waiting[e.stream_seq] = "waiting for the pruner's previous event"
            return
        listed = pruned_ids(e)

        await self.mark.expect()

        async def work(tx: AsyncManagedTransaction) -> bool:
            await self.mark.check(tx)  # nothing into a store emptied since
            P, E = self.process, self.event
            result = await tx.run(
                f"MERGE (c:{C} {{model: $model}}) "
                "ON CREATE SET c.seq = 0, c.applied = 0 "
                "SET c.applied = c.applied "  # the lock before the check
                "WITH c WHERE coalesce(c.pruner, 0) = $base "
                "SET c.pruner = $version, c.pruner_seq = $seq RETURN c.model AS m",
                model=self.spec.name,
                base=base,
                version=e.version,
                seq=e.stream_seq,
            )
            if await result.single() is None:
                return False
            ids, frontier = list(dict.fromkeys(listed)), list(dict.fromkeys(listed))
            while frontier:
                result = await tx.run(
                    f"MATCH (c:{P})-[:CHILD_OF]->(q:{P}) WHERE q.id IN $ids RETURN c.id AS id",
                    ids=frontier,
                )
                below = [r["id"] async for r in result]
                frontier = [i for i in dict.fromkeys(below) if i not in ids]
                ids += frontier
            result = await tx.run(
                f"MATCH (n:{P}) WHERE n.id IN $ids "
                f"OPTIONAL MATCH (n)-[:CHILD_OF]->(q:{P}) "
                f"OPTIONAL MATCH (n)-[:AWAITS]->(x:{E}) "
                # grouped by process: two pruned processes of one version are two
                "RETURN n.id AS id, n.version AS version, collect(DISTINCT q.id) AS parents, "
                "collect(DISTINCT x.id) AS awaited",
                ids=ids,
            )
            gone, parents, awaited = 0, set(), set()
            async for r in result:
                gone += int(r["version"] or 0)
                parents.update(r["parents"])
                awaited.update(r["awaited"])
            await tx.run(f"MATCH (x:{E}) WHERE x.process IN $ids DETACH DELETE x", ids=ids)
            # A surviving process caused by a pruned one waits for those causes again,
            # as it does in a rebuild from the purged stream.
            await tx.run(
                f"MATCH (w:{P})-[r:CAUSED_BY]->(q:{P}) WHERE q.id IN $ids AND NOT w.id IN $ids "
                "UNWIND coalesce(r.causes, []) AS cause "
                f"MERGE (x:{E} {{id: cause}}) MERGE (w)-[:AWAITS]->(x)",
                ids=ids,
            )
            await tx.run(f"MATCH (n:{P}) WHERE n.id IN $ids DETACH DELETE n", ids=ids)
            # Parents named only by pruned processes, and causes only they awaited, are
            # placeholders a rebuild would not make.
            await tx.run(
                f"MATCH (q:{P}) WHERE q.id IN $parents AND q.version = 0 "
                f"OPTIONAL MATCH (c:{P})-[:CHILD_OF]->(q) "
                "WITH q, count(c) AS kids WHERE kids = 0 DELETE q",
                parents=sorted(parents - set(ids)),
            )
            await tx.run(
                f"MATCH (x:{E}) WHERE x.id IN $awaited AND x.process IS NULL "
                f"OPTIONAL MATCH (w:{P})-[:AWAITS]->(x) "
                "WITH x, count(w) AS waiting WHERE waiting = 0 DELETE x",
                awaited=sorted(awaited),
            )
            await tx.run(f"UNWIND $ids AS id MERGE (m:{self.pruned_label} {{id: id}})", ids=ids)
            await tx.run(
                f"MATCH (c:{C} {{model: $model}}) "
                "SET c.applied = c.applied + 1 - $gone "
                "WITH c WHERE c.seq < $seq SET c.seq = $seq",
                model=self.spec.name,
                gone=gone,
                seq=e.stream_seq,
            )
            return True

        async with self.driver.session(database=self.database) as session:
            ok = await graph_io(
                session.execute_write(work),
                session=session,
                database=self.database,
                driver=self.driver,
            )
        if ok:
            outcome.done.append(e.stream_seq)
            outcome.applied += 1
        else:
            outcome.waiting[e.stream_seq] = "the pruner's stored version moved; recomputing"

    async def _apply_processes(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        groups = group(events)
        pruned = await self._pruned(list(groups))
        for pid in pruned & set(groups):
            # a pruned process's later events: nothing (a rebuild never sees them)
            outcome.done.extend(e.stream_seq for e in groups.pop(pid))
        if not groups:
            return outcome
        stored = await self._versions(list(groups))
        rows: list[dict[str, Any]] = []
        evs: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        causes: list[dict[str, Any]] = []
        seqs: dict[str, list[int]] = {}
        refusals: list[dict[str, Any]] = []
        for pid, batch in groups.items():
            base, declared, last_seq, refused = stored.get(pid, (0, "", 0, []))
            fresh = next_events(base, last_seq, batch, outcome, refused)
            refusals += [
                {"id": pid, "seq": e.stream_seq}
                for e in batch
                if e.stream_seq in outcome.failed and e.stream_seq not in refused
            ]
            if not fresh:
                continue
            rows.append(
                {
                    "id": pid,
                    "base": base,
                    "version": fresh[-1].version,
                    "seq": fresh[-1].stream_seq,
                    "n": len(fresh),
                }
            )
            seqs[pid] = [e.stream_seq for e in fresh]
            for e in fresh:
                if is_noop(e):
                    continue
                env = e.envelope
                evs.append({"id": env.event_id, "process": pid})
                parent = env.parent_aggregate_id
                if not declared and parent and parent != pid:
                    declared = parent
                    links.append({"child": pid, "parent": parent})
                if env.causation_id:
                    causes.append({"process": pid, "cause": env.causation_id})
        ok: dict[str, int] = {}
        if rows:
            maxseq = max(s for ss in seqs.values() for s in ss)
            ok = await self._write(rows, evs, links, causes, maxseq)
        if refusals:
            # After the write: a refusal in the same call as a process's first events
            # needs the node that write creates (remembered before it, it was lost).
            await self._remember_refused(refusals)
        for pid, ss in seqs.items():
            if pid in ok:
                outcome.done.extend(ss)
                outcome.applied += ok[pid]
            else:
                for s in ss:
                    outcome.waiting[s] = "the stored process_seq moved; recomputing"
        return outcome

    async def _remember_refused(self, refusals: list[dict[str, Any]]) -> None:
        async with self.driver.session(database=self.database) as session:
            await graph_run(
                session,
                f"UNWIND $rows AS r MATCH (p:{self.process} {{id: r.id}}) "
                "WITH p, r WHERE NOT r.seq IN coalesce(p.refused, []) "
                "SET p.refused = coalesce(p.refused, []) + r.seq",
                rows=refusals,
            )

    async def _write(
        self,
        rows: list[dict[str, Any]],
        evs: list[dict[str, Any]],
        links: list[dict[str, Any]],
        causes: list[dict[str, Any]],
        maxseq: int,
    ) -> dict[str, int]:
        P, E = self.process, self.event

        await self.mark.expect()

        async def work(tx: AsyncManagedTransaction) -> dict[str, int]:
            await self.mark.check(tx)  # nothing into a store emptied since
            result = await tx.run(
                f"UNWIND $rows AS r MERGE (p:{P} {{id: r.id}}) "
                "ON CREATE SET p.version = 0 "
                "SET p.version = p.version "  # takes the node's write lock before the check
                "WITH p, r WHERE p.version = r.base "
                "SET p.version = r.version, p.seq = r.seq "
                "RETURN p.id AS id, r.n AS n",
                rows=rows,
            )
            ok = {r["id"]: int(r["n"]) async for r in result}
            if not ok:
                return ok
            mine = [e for e in evs if e["process"] in ok]
            if mine:
                await tx.run(
                    f"UNWIND $evs AS e MERGE (x:{E} {{id: e.id}}) SET x.process = e.process",
                    evs=mine,
                )
            child_links = [link for link in links if link["child"] in ok]
            if child_links:
                await tx.run(
                    f"UNWIND $links AS l MATCH (c:{P} {{id: l.child}}) "
                    f"MERGE (q:{P} {{id: l.parent}}) ON CREATE SET q.version = 0 "
                    "SET c.declared = l.parent "
                    "MERGE (c)-[:CHILD_OF]->(q)",
                    links=child_links,
                )
            waits = [c for c in causes if c["process"] in ok]
            if waits:
                await tx.run(
                    f"UNWIND $causes AS c MATCH (p:{P} {{id: c.process}}) "
                    f"MERGE (x:{E} {{id: c.cause}}) MERGE (p)-[:AWAITS]->(x)",
                    causes=waits,
                )
            touched = sorted({e["id"] for e in mine} | {c["cause"] for c in waits})
            if touched:
                await tx.run(
                    f"MATCH (w:{P})-[a:AWAITS]->(x:{E}) "
                    "WHERE x.id IN $ids AND x.process IS NOT NULL "
                    f"MATCH (q:{P} {{id: x.process}}) "
                    "DELETE a "
                    "WITH w, q, x WHERE w.id <> q.id "
                    "MERGE (w)-[r:CAUSED_BY]->(q) "
                    # the causes behind the edge: a prune of q turns them back into
                    # the AWAITS a rebuild (which never sees q's events) makes
                    "SET r.causes = CASE WHEN x.id IN coalesce(r.causes, []) "
                    "THEN r.causes ELSE coalesce(r.causes, []) + x.id END",
                    ids=touched,
                )
            await tx.run(
                f"MERGE (c:{self.checkpoint_label} {{model: $model}}) "
                "ON CREATE SET c.seq = 0, c.applied = 0 "
                "SET c.applied = c.applied + $applied "
                "WITH c WHERE c.seq < $seq SET c.seq = $seq",
                model=self.spec.name,
                applied=sum(ok.values()),
                seq=maxseq,
            )
            return ok

        async with self.driver.session(database=self.database) as session:
            return await graph_io(
                session.execute_write(work),
                session=session,
                database=self.database,
                driver=self.driver,
            )

    async def birth_mark(self) -> str | None:
        return await self.mark.stored()

    async def take_birth_mark(self) -> str:
        return await self.mark.take()

    async def store_lost(self) -> bool:
        return await self.mark.lost()

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        placeholder = skipped(aggregate_id, await self.position(aggregate_id) + 1, stream_seq, 0)
        return stream_seq in (await self.apply([placeholder])).done

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        # Not yet: the voided event's id may be the cause behind other processes'
        # CAUSED_BY edges (they would await it again) and its parent link may go.
        raise NotImplementedError(
            f"{self.spec.name}: one process is not written again alone yet (its events "
            "are causes of other processes' CAUSED_BY edges); rebuild it side by side: "
            f"`jetsource projector rebuild {self.spec.name} --to-version "
            f"{self.spec.version + 1}`, then `jetsource projector cutover {self.spec.name}`"
        )

    async def checkpoint(self) -> Checkpoint:
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (c:{self.checkpoint_label}) RETURN c.seq AS seq, c.applied AS applied",
            )
            record = await result.single()
        if record is None:
            return Checkpoint(0, 0)
        return Checkpoint(int(record["seq"] or 0), int(record["applied"] or 0))

    async def edges(self, rel: str) -> list[tuple[str, str]]:
        """(from, to) process ids of CHILD_OF, CAUSED_BY or AWAITS (to: an event id)."""
        if rel not in ("CHILD_OF", "CAUSED_BY", "AWAITS"):
            raise ValueError(f"unknown relationship {rel!r}")
        target = self.event if rel == "AWAITS" else self.process
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (a:{self.process})-[:{rel}]->(b:{target}) RETURN a.id AS a, b.id AS b",
            )
            return sorted([(str(r["a"]), str(r["b"])) async for r in result])

    async def digest(self) -> str:
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (n:{self.process}) RETURN n.id AS id, n.version AS version, "
                "n.declared AS declared ORDER BY id",
            )
            nodes = [(r["id"], r["version"], r["declared"]) async for r in result]
            result = await graph_run(
                session, f"MATCH (x:{self.event}) RETURN x.id AS id, x.process AS p ORDER BY id"
            )
            evs = [(r["id"], r["p"]) async for r in result]
        rels = [await self.edges(rel) for rel in ("CHILD_OF", "CAUSED_BY", "AWAITS")]
        applied = (await self.checkpoint()).applied
        return hashlib.sha256(repr((nodes, evs, rels, applied)).encode()).hexdigest()

    async def drop(self) -> int:
        async with self.driver.session(database=self.database) as session:
            result = await graph_run(
                session,
                f"MATCH (n) WHERE n:{self.process} OR n:{self.event} OR n:{self.checkpoint_label} "
                f"OR n:{self.pruned_label} DETACH DELETE n RETURN count(*) AS c",
            )
            record = await result.single()
            return int(record["c"]) if record else 0

    async def close(self) -> None:
        pass
