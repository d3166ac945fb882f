"""Pruning on a real NATS server: the oldest ended sessions by count, expired ones by
age, whole trees (nested processes too); active and interrupted sessions stay; a stream
that denies purge refuses and nothing changes."""

from __future__ import annotations

import asyncio

import pytest

from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.format import new_session_id
from jetsource.domains.sessions.service import PruneDeniedError, Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.infra import Server

from .conftest import provision, sessions_settings


async def ended(client: SessionsClient, n: int) -> list[str]:
    ids = []
    for i in range(n):
        async with session(client.writer, f"run {i}") as s:
            s.emit("scan_started", {"root": "/"})
        ids.append(s.id)
        await asyncio.sleep(0.005)  # distinct end times
    return ids


async def child_of(client: SessionsClient, parent: str) -> str:
    """A component's own process nested under the session (as the SDK records it)."""
    from google.protobuf import struct_pb2

    from jetsource._gen.process.v1 import events_pb2

    child = new_session_id()
    data = struct_pb2.Struct()
    data.update({"kind": "provider", "name": "llm call"})
    await client.writer.record(
        [
            events_pb2.CanonicalEvent(
                process_id=child, parent_process_id=parent, event_type="process_started", data=data
            ),
            events_pb2.CanonicalEvent(
                process_id=child, parent_process_id=parent, event_type="process_completed"
            ),
        ]
    )
    return child


async def test_prune_by_count_removes_the_oldest_completed_trees_and_spares_the_rest(
    client: SessionsClient,
) -> None:
    done = await ended(client, 4)
    nested = await child_of(client, done[0])
    active = Session(client.writer, "still running", heartbeat_s=60)
    await active.__aenter__()
    quiet = Session(client.writer, "emitter died", heartbeat_s=60)
    await quiet.__aenter__()
    assert quiet._task is not None
    quiet._task.cancel()
    # the quiet one goes past interrupted_after_s, the active one keeps talking
    active.emit("scan_progress", {"files_scanned": 1})
    await active.flush()
    later = Sessions(
        client.sessions.reader,
        client.sessions.settings.model_copy(update={"interrupted_after_s": 0.5}),
    )
    await asyncio.sleep(0.6)
    active.emit("scan_progress", {"files_scanned": 2})
    await active.flush()

    plan = await later.prune(client.purger, older_than_s=0, keep=2, dry_run=True)
    assert [r.session_id for r in plan.pruned] == done[:2]
    assert plan.processes == 3  # the first session's nested process goes with it
    assert len(await client.sessions.export(done[0])) == 3  # a dry run changes nothing

    report = await later.prune(client.purger, older_than_s=0, keep=2)
    assert [r.session_id for r in report.pruned] == done[:2]
    assert report.events == 3 + 3 + 2  # two sessions and the nested process
    left = {r.session_id: r.status for r in await later.list_sessions()}
    assert set(left) == {done[2], done[3], active.id, quiet.id}
    assert left[quiet.id] == "interrupted" and left[active.id] == "active"
    assert nested not in await client.sessions.reader.processes()
    assert await client.sessions.reader.events(done[0]) == []
    await active.close()


async def test_prune_by_age_removes_expired_ended_sessions_only(
    client: SessionsClient,
) -> None:
    old = await ended(client, 2)
    interrupted = Session(client.writer, "gone", heartbeat_s=60)
    await interrupted.__aenter__()
    assert interrupted._task is not None
    interrupted._task.cancel()
    await asyncio.sleep(1.1)
    young = await ended(client, 1)
    s = Sessions(client.sessions.reader, client.sessions.settings.model_copy(
        update={"interrupted_after_s": 0.5}))  # fmt: skip
    report = await s.prune(client.purger, older_than_s=1.0, keep=0)
    assert sorted(r.session_id for r in report.pruned) == sorted(old)
    left = {r.session_id for r in await s.list_sessions()}
    assert left == {interrupted.id, *young}


async def test_a_stream_that_denies_purge_refuses_and_nothing_is_removed(
    nats_server: Server, unique: str
) -> None:
    settings: SessionsAppSettings = sessions_settings(nats_server.url, unique + "d")
    await provision(settings, deny_purge=True)
    async with open_sessions(settings) as c:
        ids = await ended(c, 2)
        with pytest.raises(PruneDeniedError, match="refused the purge"):
            await c.sessions.prune(c.purger, older_than_s=0, keep=1)
        assert {r.session_id for r in await c.sessions.list_sessions()} == set(ids)


async def test_a_dry_run_counts_the_events_the_prune_removes_nested_processes_included(
    client: SessionsClient,
) -> None:
    """The dry run counted the session's own events alone: 3 where the prune removed 5,
    the nested process's 2 events too."""
    done = await ended(client, 2)
    await child_of(client, done[0])
    dry = await client.sessions.prune(client.purger, older_than_s=0, keep=1, dry_run=True)
    real = await client.sessions.prune(client.purger, older_than_s=0, keep=1)
    assert [r.session_id for r in real.pruned] == [r.session_id for r in dry.pruned] == done[:1]
    assert (dry.processes, dry.events) == (real.processes, real.events) == (2, 5)
