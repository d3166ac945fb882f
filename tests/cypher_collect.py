"""Every Cypher statement the graph read model sends, collected from the code.

The real code paths run against a recording fake Neo4j driver (sessions, managed
transactions, results): ``GraphModel`` applies a generated story history (every event
type, batched several ways), skips, rewinds (to a version, to nothing, under a
guard), reads its position and checkpoint, dumps and digests, serves the query
service's graph reads (``nodes``, ``neighbourhood``), is counted by the projector
admin and is dropped; ``setup`` creates its constraints and indexes. Each
``session.run``/``tx.run`` is recorded with its query, the names of the parameters
passed and the source line that sent it.

``source_sites`` and ``cypher_literals`` read the source (with ``ast``, not regexes
over text) for every ``.run(...)`` call and every string literal that looks like
Cypher, so a test can fail when the code gains a statement this collector never
drove.

Run as a script it prints the distinct statements as JSON, the input of
``scripts/cypher-lint.mjs``::

    .venv/bin/python -m tests.cypher_collect | node scripts/cypher-lint.mjs
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jetsource.core.envelope import NewEvent, RecordedEvent
from jetsource.domains.context.events import registry
from jetsource.domains.context.graph_model import GraphModel, graph_spec
from jetsource.domains.context.model import CloseContext, ContextState, decide, evolve
from jetsource.domains.context.samples import story_events
from jetsource.domains.process.models.graph import ProcessGraphModel, process_graph_spec
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.projection import admin

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "services" / "jetsource"
# Where Cypher could be written: every module of the package but the generated ones
# (today the graph model, the admin commands that count its nodes, and the query
# service's graph reads through the model).
SOURCES = tuple(p for p in sorted(PACKAGE.rglob("*.py")) if "_gen" not in p.parts)

# What a fake record answers for a column no row parameter supplies: enough for every
# code path to go on (a count of 0 ends the drop loop, properties are a map).
_DEFAULTS: dict[str, Any] = {
    "c": 0,
    "p": {},
    "v": 0,
    "version": 0,
    "seq": 0,
    "applied": 0,
    "refused": [],
    "pruner_seq": 0,
    "s": 0,
}


@dataclass(frozen=True)
class Statement:
    query: str
    parameters: tuple[str, ...]
    site: tuple[str, int]  # (path relative to the repository, line)

    def as_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "parameters": list(self.parameters),
            "site": f"{self.site[0]}:{self.site[1]}",
        }


GRAPH_HELPERS = str(Path("jetsource", "projection", "graph.py"))


@dataclass
class Recorder:
    statements: list[Statement] = field(default_factory=list)

    def record(self, query: str, params: dict[str, Any], depth: int = 2) -> list[_Record]:
        caller = sys._getframe(depth)
        # Through graph_run (projection/graph.py): the site is the line that called it.
        while (
            caller.f_back is not None
            and caller.f_code.co_filename.endswith(GRAPH_HELPERS)
            and caller.f_code.co_name in ("read", "graph_io", "graph_run")
        ):
            caller = caller.f_back
        site = (_rel(Path(caller.f_code.co_filename)), caller.f_lineno)
        self.statements.append(Statement(query, tuple(sorted(params)), site))
        rows = params.get("rows")
        if isinstance(rows, list):
            return [_Record(row, params) for row in rows]
        return [_Record({}, params)]


class _Record:
    def __init__(self, row: dict[str, Any], params: dict[str, Any]) -> None:
        self._row, self._params = row, params

    def __getitem__(self, key: str) -> Any:
        if key in self._row:
            return self._row[key]
        if key in _DEFAULTS:
            return _DEFAULTS[key]
        return self._params.get(key, key)


class _Result:
    def __init__(self, records: list[_Record]) -> None:
        self._records = records

    def __aiter__(self) -> AsyncIterator[_Record]:
        async def it() -> AsyncIterator[_Record]:
            for r in self._records:
                yield r

        return it()

    async def single(self) -> _Record | None:
        return self._records[0] if self._records else None

    async def consume(self) -> None:
        return None


async def _result(records: list[_Record]) -> _Result:
    return _Result(records)


class _Tx:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def run(self, query: str, **params: Any) -> Awaitable[_Result]:
        # A plain function so the frame above is the line that called ``run``.
        return _result(self._recorder.record(query, params))


class _Session(_Tx):
    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute_write(self, work: Callable[[_Tx], Awaitable[T]]) -> T:
        return await work(_Tx(self._recorder))

    execute_read = execute_write


class RecordingDriver:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def session(self, **_: Any) -> _Session:
        return _Session(self.recorder)

    async def close(self) -> None:
        return None


def _histories() -> dict[str, list[Any]]:
    """Two stories: one growing, one long-lived and closed at the end."""
    out = {"story-a": story_events("story-a", 160, seed=1)}
    closing = story_events("story-b", 120, seed=2, max_nodes=8)
    state = ContextState(id="story-b")
    for message in closing:
        state = evolve(state, message)
    out["story-b"] = closing + decide(CloseContext("done", closed_by="sampler"), state)
    return out


async def _recorded_events() -> tuple[InMemoryEventStore, list[RecordedEvent]]:
    store = InMemoryEventStore(registry)
    histories = _histories()
    for story, history in histories.items():
        for i in range(0, len(history), 5):
            await store.append(story, [NewEvent(m) for m in history[i : i + 5]], i)
    return store, [r async for r in store.read_all()]


async def collect_async() -> list[Statement]:
    recorder = Recorder()
    store, records = await _recorded_events()
    seen_types = {r.envelope.event_type for r in records}
    missing = set(registry.event_types()) - seen_types
    if missing:
        raise AssertionError(f"the generated history lacks event types {sorted(missing)}")
    for prefix in ("", "t1"):
        model = GraphModel(graph_spec(1), RecordingDriver(recorder), "neo4j", store, 10_000, prefix)  # type: ignore[arg-type]
        await model.setup()
        for size in (1, 7, len(records)):  # one by one, small batches, everything at once
            model._cache.clear()  # each batching starts from an empty graph
            for i in range(0, len(records), size):
                await model.apply(records[i : i + size])
        # A redelivery (the story's refused sequences are read) and a second event for
        # a version applied already, from a later sequence (refused and remembered).
        first = records[0]
        await model.apply([first])
        again = RecordedEvent(
            first.envelope, first.event, records[-1].stream_seq + 1, first.recorded_at_ns
        )
        await model.apply([again])
        # A cold model (nothing cached) reads the stored versions first.
        cold = GraphModel(graph_spec(1), RecordingDriver(recorder), "neo4j", store, 0, prefix)  # type: ignore[arg-type]
        await cold.apply(records[:3])
        story = records[0].envelope.aggregate_id
        history = [r for r in records if r.envelope.aggregate_id == story]
        await model.skip(story, history[-1].stream_seq + 1)
        await model.rewind(story, len(history) // 2, events=history)
        await model.rewind(story, len(history) // 2)  # read from the store
        await model.rewind(story, 3, events=history, guard=(0, 10))
        await model.rewind(story, 3, events=history, guard=(5, 10))  # the guard refuses
        await model.rewind(story, 0)
        await model.position(story)
        await model.checkpoint()
        await model.digest()  # dump and checkpoint
        await model.nodes(story)  # the query service's GetGraph reads these two
        await model.neighbourhood(story)
        await admin._count(model)
        await model.drop()
        await model.close()
    for prefix in ("", "t1"):
        await _drive_process_graph(recorder, prefix)
        await _drive_fence(recorder, prefix)
    await _drive_store_probe(recorder)
    return recorder.statements


def _process_records() -> list[RecordedEvent]:
    """A root, a child named before its parent, causation within and across
    processes, a second event for a version (refused), a discarded dead letter's
    stand-in."""
    from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
    from jetsource.core.codec import UnknownEvent

    rows = [
        ("child", 1, "root", "", "e1"),
        ("root", 1, "", "", "e2"),
        ("child", 2, "", "e2", "e3"),
        ("root", 2, "", "e3", "e4"),
        ("root", 3, "", "e-later", "e5"),
        ("child", 2, "", "", "e6"),  # a second event for version 2: refused, remembered
    ]
    out = []
    for seq, (pid, version, parent, cause, event_id) in enumerate(rows, start=1):
        env = EventEnvelope(
            event_id=event_id,
            event_type="step_done",
            aggregate_id=pid,
            aggregate_version=version,
            parent_aggregate_id=parent,
            causation_id=cause,
            payload=b"",
        )
        out.append(RecordedEvent(env, UnknownEvent("step_done", 1, b""), seq, seq))
    # The pruner's tombstone of the child, then a late event of the pruned child.
    from jetsource.domains.process.pruning import PRUNER_ID, tombstone

    stone = tombstone("root", ["child"])
    env = EventEnvelope(
        event_id="e6",
        event_type=stone.event_type,
        aggregate_id=PRUNER_ID,
        aggregate_version=1,
        payload=stone.event.SerializeToString(),
    )
    out.append(RecordedEvent(env, stone.event, len(out) + 1, len(out) + 1))
    env = EventEnvelope(event_id="e7", event_type="step_done", aggregate_id="child",
                        aggregate_version=3, payload=b"")  # fmt: skip
    out.append(RecordedEvent(env, UnknownEvent("step_done", 1, b""), len(out) + 1, len(out) + 1))
    return out


async def _drive_process_graph(recorder: Recorder, prefix: str) -> None:
    records = _process_records()
    model = ProcessGraphModel(process_graph_spec(1), RecordingDriver(recorder), "neo4j", prefix)  # type: ignore[arg-type]
    await model.setup()
    for size in (1, len(records)):
        for i in range(0, len(records), size):
            await model.apply(records[i : i + size])
    await model.skip("root", 99)
    await model.position("root")
    await model.checkpoint()
    for rel in ("CHILD_OF", "CAUSED_BY", "AWAITS"):
        await model.edges(rel)
    await model.digest()
    await model.drop()
    await model.close()


class _FenceTx(_Tx):
    """Answers a partition fence's reads with a scripted stored token (None: no
    fence node yet) and node count (2: racing first claims left two), so every
    branch of claim and check runs."""

    def __init__(self, recorder: Recorder, stored: int | None, count: int) -> None:
        super().__init__(recorder)
        self._stored = stored
        self._count = 0 if stored is None else count

    def run(self, query: str, **params: Any) -> Awaitable[_Result]:
        self._recorder.record(query, params)
        return _result([_Record({"t": self._stored, "c": self._count}, params)])


class _FenceSession(_Session):
    def __init__(self, recorder: Recorder, stored: int | None, count: int) -> None:
        super().__init__(recorder)
        self._stored = stored
        self._count = count

    async def execute_write(self, work: Callable[[_Tx], Awaitable[T]]) -> T:
        return await work(_FenceTx(self._recorder, self._stored, self._count))


class _FenceDriver(RecordingDriver):
    def __init__(self, recorder: Recorder, stored: int | None, count: int) -> None:
        super().__init__(recorder)
        self.stored = stored
        self.count = count

    def session(self, **_: Any) -> _Session:
        return _FenceSession(self.recorder, self.stored, self.count)


async def _drive_fence(recorder: Recorder, prefix: str) -> None:
    """The fencing statements of a partitioned graph model (projection/graph.py)."""
    from jetsource.projection.graph import FencedDriver
    from jetsource.projection.partitions import Fence, FencedError

    async def held() -> bool:
        return True

    async def nothing(tx: Any) -> None:
        return None

    # no fence node, an older token, ours, a newer one; then two nodes (racing first
    # claims) holding an older token and ours
    for stored, count in ((None, 0), (3, 1), (5, 1), (9, 1), (3, 2), (5, 2)):
        fence = Fence("g", 0, 5, held)
        fake = _FenceDriver(recorder, stored, count)
        driver = FencedDriver(fake, fence, prefix, "neo4j")  # type: ignore[arg-type]
        with contextlib.suppress(FencedError):
            await driver.claim()
        async with driver.session(database="neo4j") as session:
            with contextlib.suppress(FencedError):
                await session.execute_write(nothing)


async def _drive_store_probe(recorder: Recorder) -> None:
    """graph_io's probe of the store (projection/graph.py _store_away), asked after a
    database error that does not say whose it is: the probe answers, the error stays
    the statement's refusal."""
    from neo4j.exceptions import DatabaseError, Neo4jError

    from jetsource.projection.graph import graph_io

    async def refused() -> None:
        raise Neo4jError._hydrate_neo4j(  # as the driver does
            code="Neo.DatabaseError.General.UnknownError", message="refused"
        )

    with contextlib.suppress(DatabaseError):
        await graph_io(refused(), session=_Session(recorder), database="neo4j")


def collect() -> list[Statement]:
    return asyncio.run(collect_async())


def distinct(statements: list[Statement]) -> list[Statement]:
    """One statement per (query, parameters), first seen first."""
    out: dict[tuple[str, tuple[str, ...]], Statement] = {}
    for s in statements:
        out.setdefault((s.query, s.parameters), s)
    return list(out.values())


# -- what the source holds ----------------------------------------------------------

_CYPHER = re.compile(
    r"\b(MATCH|MERGE|UNWIND|RETURN|DETACH DELETE|CREATE (CONSTRAINT|INDEX)|ON CREATE SET)\b"
    r"|^\(\w+:|\bREQUIRE\b|\bSET \w+\."
)


@dataclass(frozen=True)
class Literal:
    path: str
    line: int
    text: str  # as written, with {…} for each interpolated piece
    pattern: re.Pattern[str]  # matches what it becomes, whatever is interpolated


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def source_sites(sources: Sequence[Path] = SOURCES) -> dict[tuple[str, int, int], str]:
    """Every ``<session or tx>.run(...)`` and ``graph_run(session, ...)`` call: (path,
    first line, last line) -> text."""
    out: dict[tuple[str, int, int], str] = {}
    for path in sources:
        for node in ast.walk(_parse(path)):
            if not isinstance(node, ast.Call):
                continue
            if (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "run"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("session", "tx")
            ) or (isinstance(node.func, ast.Name) and node.func.id == "graph_run"):
                if node.args and isinstance(node.args[0], ast.Starred):
                    continue  # graph_run's own session.run(*args): its callers are the sites
                key = (_rel(path), node.lineno, node.end_lineno or node.lineno)
                out[key] = ast.unparse(node)
    return out


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            ids.add(id(node.value))
    return ids


def _literals(tree: ast.Module) -> Iterator[ast.Constant | ast.JoinedStr]:
    """Outermost string literals (an f-string's own pieces are not listed apart)."""
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inner.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if id(node) in inner:
            continue
        if isinstance(node, ast.JoinedStr) or (
            isinstance(node, ast.Constant) and isinstance(node.value, str)
        ):
            yield node


def cypher_literals(sources: Sequence[Path] = SOURCES) -> list[Literal]:
    """Every string literal of the sources that looks like Cypher."""
    out = []
    for path in sources:
        tree = _parse(path)
        skip = _docstrings(tree)
        for node in _literals(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Constant):
                parts: list[str | None] = [str(node.value)]
            else:
                parts = [
                    str(v.value) if isinstance(v, ast.Constant) else None  # None: interpolated
                    for v in node.values
                ]
            text = "".join("{…}" if p is None else p for p in parts)
            if not _CYPHER.search(text):
                continue
            regex = "".join(r"[\s\S]*?" if p is None else re.escape(p) for p in parts)
            out.append(Literal(_rel(path), node.lineno, text, re.compile(regex)))
    return out


def uncovered(statements: list[Statement], sources: Sequence[Path] = SOURCES) -> list[str]:
    """What the source holds that no collected statement shows: ``.run`` calls never
    made, Cypher literals found in no statement."""
    hit = {s.site for s in statements}
    missing = [
        f"{path}:{first}: {text}"
        for (path, first, last), text in source_sites(sources).items()
        if not any(p == path and first <= line <= last for p, line in hit)
    ]
    queries = {s.query for s in statements}
    missing += [
        f"{lit.path}:{lit.line}: literal {lit.text!r}"
        for lit in cypher_literals(sources)
        if not any(lit.pattern.search(q) for q in queries)
    ]
    return missing


def main() -> None:
    statements = collect()
    gaps = uncovered(statements)
    if gaps:
        sys.exit("statements in the code the collector never sent:\n" + "\n".join(gaps))
    json.dump([s.as_json() for s in distinct(statements)], sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
