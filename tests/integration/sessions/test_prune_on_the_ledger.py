"""Pruning on the real ledger: sessions recorded through the observer into the
PROCESS_EVENTS stream (the process domain's own policy: purge allowed for the pruner),
projected by a running projector, read through ProcessQueryService.

- a prune removes the ended sessions older than the cut (with the processes nested
  under them), spares the active and the young ones; the registry, the timelines, the
  graph, ``jetsource sessions list`` (READER=query), the stream and the idempotency
  claims forget them; the live read models equal a clean rebuild from the stream;
- a pruner killed after its tombstone (or in the middle of a tree's purge) leaves the
  models forgetting the session and its events still in the stream; the next run
  finishes that first, and everything converges to the same state.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1 import events_pb2
from jetsource._gen.process.v1 import query_pb2 as q
from jetsource.core.envelope import ANY
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.pruner import TreePruner
from jetsource.domains.process.pruning import PRUNER_ID, tombstone
from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.ledger import ObserverWriter, ProcessSummary
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings, SessionsSettings
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection, open_projection
from tests.e2e.test_process_query import MODELS, Stack, stack  # noqa: F401  (the fixture)
from tests.kvkeys import kv_keys
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.e2e


@pytest.fixture
async def client(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
    unique: str,
) -> AsyncIterator[SessionsClient]:
    chosen = SessionsSettings(
        reader="query",
        process_query=f"127.0.0.1:{stack.query.port}",
        claims_bucket=f"CL_{unique}",
        interrupted_after_s=30,
    )
    async with open_sessions(SessionsAppSettings(nats=settings.nats, sessions=chosen)) as c:
        # Only this test's sessions: PROCESS_EVENTS is shared by the session's tests.
        c.sessions = Sessions(Only(c.sessions.reader, unique), c.sessions.settings)
        yield c
        # PROCESS_EVENTS is shared: later tests fold it without knowing of pruning, so
        # the pruner's events go (a fresh model then sees this test's late event as an
        # ordinary process).
        await jsapi.api(
            c.purger._replies,
            "STREAM.PURGE.PROCESS_EVENTS",
            {"filter": f"process.events.{PRUNER_ID}.>"},
            5.0,
        )


class Only:
    """A reader showing the sessions whose command names the test, and their children."""

    def __init__(self, reader: Any, tag: str) -> None:
        self._reader, self._tag = reader, tag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def processes(self) -> dict[str, ProcessSummary]:
        procs = await self._reader.processes()
        roots = {pid for pid, p in procs.items() if self._tag in p.name}
        return {pid: p for pid, p in procs.items() if pid in roots or p.parent in roots}

    async def sessions(self) -> list[ProcessSummary]:
        return [p for p in await self._reader.sessions() if self._tag in p.name]


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, models=MODELS), provision=False)
    yield p
    await p.close()


async def ended(writer: ObserverWriter, name: str, child: bool = False) -> tuple[str, list[str]]:
    """A completed session (and a component process nested under it); its ids."""
    async with session(writer, name) as s:
        s.emit("scan_started", {"root": "/"})
    ids = [s.id]
    if child:
        kid = f"{s.id}-provider"
        data = struct_pb2.Struct()
        data.update({"kind": "provider", "name": "llm call"})
        await writer.record(
            [
                events_pb2.CanonicalEvent(
                    process_id=kid,
                    parent_process_id=s.id,
                    event_type="process_started",
                    data=data,
                    idempotency_key=f"{kid}-start",
                ),
                events_pb2.CanonicalEvent(
                    process_id=kid, parent_process_id=s.id, event_type="process_completed"
                ),
            ]
        )
        ids.append(kid)
    return s.id, ids


async def eventually(check: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await check():
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {check.__doc__ or check}")
        await asyncio.sleep(0.05)


async def listed(c: SessionsClient) -> dict[str, str]:
    return {r.session_id: r.status for r in await c.sessions.list_sessions()}


async def in_registry(stack: Stack, pid: str) -> bool:  # noqa: F811
    try:
        await stack.reads.GetProcess(q.GetProcessRequest(process_id=pid), timeout=5)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return False
    return True


async def stream_counts(c: SessionsClient, ids: Sequence[str]) -> dict[str, int]:
    return {pid: await c.store.last_version(pid) for pid in ids}


async def claims(c: SessionsClient, unique: str, pid: str) -> list[str]:
    return [k for k in await kv_keys(c.nc, f"CL_{unique}") if f".{pid}." in k]


async def rebuilt_equals_live(p: Projection) -> None:
    """Each process model built afresh from the stream (version 2, one batch of 50 at a
    time) has the digest of the live one (version 1) once that has caught up."""
    store = p.domain_store("process")
    records = [r async for r in store.read_all()]
    for name in MODELS:
        fresh = p.model(name, 2)
        await fresh.setup()
        try:
            for i in range(0, len(records), 50):
                outcome = await fresh.apply(records[i : i + 50])
                assert not outcome.waiting and not outcome.failed, outcome
            want = await fresh.digest()
            live = p.model(name, 1)

            async def same(live: Any = live, want: str = want) -> bool:
                return bool(await live.digest() == want)

            same.__doc__ = f"{name}: the live model equals a rebuild"
            await eventually(same)
        finally:
            await fresh.drop()


async def cli(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
    unique: str,
    *args: str,
) -> Any:
    """``jetsource sessions ARGS -o json`` as a user runs it, reading through the query
    service (READER=query); its JSON output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env.update(
        {
            "JETSOURCE_NATS__URL": settings.nats_url(),
            "JETSOURCE_SESSIONS__READER": "query",
            "JETSOURCE_SESSIONS__PROCESS_QUERY": f"127.0.0.1:{stack.query.port}",
            "JETSOURCE_SESSIONS__CLAIMS_BUCKET": f"CL_{unique}",
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetsource", "sessions", *args, "-o", "json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


AGE_S = 4.0  # the prune rule: old sessions are older than it, the young one is not


async def test_prune_on_the_ledger_stack_forgets_old_ended_sessions_everywhere(
    stack: Stack,  # noqa: F811
    client: SessionsClient,
    projection: Projection,
    settings: JetsourceSettings,
    unique: str,
) -> None:
    writer = ObserverWriter(stack.record)
    old = [await ended(writer, f"old {i} {unique}", child=i == 0) for i in range(3)]
    active = Session(writer, f"running {unique}", heartbeat_s=0.5)
    await active.__aenter__()
    active.emit("scan_progress", {"files_scanned": 1})
    await active.flush()
    # The old sessions end AGE_S before the young one: under load, listing and the
    # claims check took over a second, and a 1 s rule pruned the young one too.
    await asyncio.sleep(AGE_S + 1.0)
    young = await ended(writer, f"young {unique}")
    mine = {sid for sid, _ in [*old, young]} | {active.id}

    async def all_listed() -> bool:
        return mine <= set(await listed(client))

    await eventually(all_listed)
    gone = [pid for _, ids in old for pid in ids]
    # claims exist for events sent with an event id or an idempotency key
    assert await claims(client, unique, old[0][1][1])

    report = await client.sessions.prune(client.purger, older_than_s=AGE_S, keep=0)
    pruned = {r.session_id for r in report.pruned}
    assert {sid for sid, _ in old} <= pruned
    assert young[0] not in pruned and active.id not in pruned
    assert report.processes == 4  # three sessions and the nested provider process

    async def forgotten() -> bool:
        return not (set(await listed(client)) & pruned)

    await eventually(forgotten)
    kept = await listed(client)
    assert kept[young[0]] == "completed" and kept[active.id] == "active"
    for pid in gone:
        assert not await in_registry(stack, pid), pid
        assert await client.sessions.reader.events(pid) == []  # no timeline
        assert await claims(client, unique, pid) == []
    assert await in_registry(stack, young[0])
    assert await stream_counts(client, gone) == dict.fromkeys(gone, 0)
    assert (await stream_counts(client, [young[0]]))[young[0]] == 3
    graph: Any = projection.model("process_graph", 1)

    async def out_of_the_graph() -> bool:
        """the graph forgets the pruned tree (its own consumer: it may lag)"""
        edges = await graph.edges("CHILD_OF")
        return not [e for e in edges if set(e) & set(gone)]

    await eventually(out_of_the_graph)

    listed_by_cli = {r["session"] for r in await cli(stack, settings, unique, "list", "-n", "0")}
    assert young[0] in listed_by_cli and active.id in listed_by_cli
    assert not listed_by_cli & pruned

    # Later events of a pruned session (a late retry) change nothing in the models.
    await writer.record(
        [events_pb2.CanonicalEvent(process_id=old[1][0], event_type="scan_progress")]
    )
    await active.close()  # the stream stops moving (no more heartbeats)
    await rebuilt_equals_live(projection)
    assert not await in_registry(stack, old[1][0])


class Killed(Exception):
    """The pruner's process dies here (SIGKILL stands in: nothing after runs)."""


class DyingPruner(TreePruner):
    """Dies after ``purges`` purges of the stream (0: right after the tombstone)."""

    def __init__(self, inner: TreePruner, purges: int) -> None:
        self.__dict__.update(inner.__dict__)
        self._left = purges

    async def _purge(self, stream: str, subject: str) -> int:
        if PRUNER_ID not in subject and stream == self._stream:
            if self._left == 0:
                raise Killed(subject)
            self._left -= 1
        return await super()._purge(stream, subject)


async def test_a_pruner_killed_mid_run_converges_on_the_next_run(
    stack: Stack,  # noqa: F811
    client: SessionsClient,
    projection: Projection,
    settings: JetsourceSettings,
    unique: str,
) -> None:
    writer = ObserverWriter(stack.record)
    first = await ended(writer, f"first {unique}", child=True)
    second = await ended(writer, f"second {unique}", child=True)
    await asyncio.sleep(1.1)
    # An active session stays, however old (the CLI's run below takes its time).
    active = Session(writer, f"running {unique}", heartbeat_s=0.5)
    await active.__aenter__()

    async def all_listed() -> bool:
        return {first[0], second[0], active.id} <= set(await listed(client))

    await eventually(all_listed)
    # Killed right after its first tombstone: the models forget the first session,
    # its events are still in the stream.
    with pytest.raises(Killed):
        await client.sessions.prune(DyingPruner(client.purger, 0), older_than_s=1.0, keep=0)

    async def first_forgotten() -> bool:
        return first[0] not in await listed(client)

    await eventually(first_forgotten)
    assert (await stream_counts(client, [first[0]]))[first[0]] == 3
    # The next run is killed in the middle of a tree's purge (one process purged).
    with pytest.raises(Killed):
        await client.sessions.prune(DyingPruner(client.purger, 1), older_than_s=1.0, keep=0)
    # A whole run converges: what the killed runs tombstoned is purged, the rest pruned.
    # The converging run is `jetsource sessions prune` itself (it prunes every old
    # ended session of the shared stream, this test's among them).
    report = await cli(stack, settings, unique, "prune", "--older-than", "1s", "--keep", "0")
    assert report["resumed"] == 1
    assert second[0] in report["sessions"] and active.id not in report["sessions"]
    gone = [*first[1], *second[1]]
    assert await stream_counts(client, gone) == dict.fromkeys(gone, 0)
    for pid in gone:
        assert not await in_registry(stack, pid), pid
    assert (await listed(client))[active.id] == "active"
    assert await client.purger.finish_pending() == 0  # nothing left half-pruned
    await active.close()
    await rebuilt_equals_live(projection)


async def test_a_tombstone_written_twice_changes_nothing_more(
    stack: Stack,  # noqa: F811
    client: SessionsClient,
    projection: Projection,
    unique: str,
) -> None:
    """Two pruners at once may tombstone one tree twice: the second forgets nothing
    more (the models stay equal to a rebuild)."""
    writer = ObserverWriter(stack.record)
    sid, ids = await ended(writer, f"twice {unique}", child=True)

    async def seen() -> bool:
        return sid in await listed(client)

    await eventually(seen)
    for _ in range(2):
        await client.store.append(PRUNER_ID, [tombstone(sid, ids)], ANY)
    await client.purger.finish_pending()
    assert await stream_counts(client, ids) == dict.fromkeys(ids, 0)
    await rebuilt_equals_live(projection)
