"""Erasure by crypto-shredding (#19): personal fields are stored encrypted under their
subject's key; `jetsource erase SUBJECT` destroys the key, and after that no personal
value of the subject is readable from any API, read model, snapshot or stream bytes,
while every other field, version and sequence reads exactly as before."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf import text_format

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.archive.archiver import Archiver, open_record, to_raw
from jetsource.archive.objectstore import LocalObjectStore
from jetsource.archive.store import Archive
from jetsource.client import ContextClient, QueryClient
from jetsource.core.crypto import ERASED
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.keys import JetStreamKeyStore
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService
from jetsource.publisher.server import build as build_publisher
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from jetsource.query.server import build as build_query
from jetsource.query.settings import QueryOptions, QuerySettings
from jetsource.snapshotter.settings import SnapshotterOptions, SnapshotterSettings
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server
from tests.projector_fixtures import (
    append_story,
    eventually,
    projector_settings,
    running_projector,
)
from tests.stack import environment

pytestmark = pytest.mark.integration
EVERY = 4


def stream_bytes(server: Server, stream: str) -> bytes:
    """Every byte the server keeps on disk for a stream (blocks, indexes, state)."""
    if server.embedded is None:
        pytest.skip("needs the embedded NATS server's store directory")
    root = Path(server.embedded.data_dir)
    out = bytearray()
    for d in root.rglob(stream):
        if d.is_dir():
            for f in d.rglob("*"):
                if f.is_file():
                    out += f.read_bytes()
    assert out, f"no files of stream {stream} under {root}"
    return bytes(out)


@pytest.fixture
async def keyed(nats_server: Server, unique: str) -> AsyncIterator[tuple[Any, JetStreamKeyStore]]:
    nc = await nats.connect(nats_server.url)
    keys = JetStreamKeyStore(nc, f"KEYS_{unique}")
    yield nc, keys
    await keys.close()
    await nc.drain()


async def test_erase_at_the_event_store(
    nats_server: Server, keyed: tuple[Any, JetStreamKeyStore], unique: str
) -> None:
    nc, keys = keyed
    alice, bob = f"alice-{unique}", f"bob-{unique}"
    cfg = isolated_settings(unique)
    store = JetStreamEventStore(nc, registry, cfg, keys=keys)
    await store.ensure_streams()
    # An event written before erasure existed: the author in the clear, no boxes.
    old = EventEnvelope(
        event_id="0190aaaa-0000-7000-8000-000000000001",
        schema_version=2,
        aggregate_version=1,
        payload=ev.DecisionAdded(decision_id="d0", title="old", author=alice).SerializeToString(),
        metadata={"actor": alice},
    )
    await nc.request(f"{cfg.subject_prefix}.s1.DecisionAdded", old.SerializeToString(), 5)
    await store.append(
        "s1",
        [
            NewEvent(ev.DecisionAdded(decision_id="d1", title="T1", author=alice, affects=["x"])),
            NewEvent(
                ev.SubtaskAdded(subtask_id="t1", title="T2", assignee=bob),
                metadata={"actor": alice, "team": "red"},
            ),
            NewEvent(ev.DecisionRevised(decision_id="d1", body="B", revised_by=bob)),
        ],
        1,
    )
    before = await store.read_aggregate("s1")
    assert [r.event.author for r in before[:2]] == [alice, alice]  # type: ignore[union-attr]
    assert before[2].event.assignee == bob  # type: ignore[union-attr]
    assert dict(before[2].envelope.metadata) == {"actor": alice, "team": "red"}
    # Stored bytes: the sealed values are nowhere in the stream, in the clear.
    on_disk = stream_bytes(nats_server, cfg.stream)
    assert bob.encode() not in on_disk
    assert on_disk.count(alice.encode()) == 2  # the old, unsealed event only
    key_of_alice = keys._keys[(await keys.ref_of(alice)) or b""][0]
    assert key_of_alice and key_of_alice in stream_bytes(nats_server, keys.stream)

    erased = await keys.erase(alice)
    assert erased.existed
    other = JetStreamEventStore(nc, registry, cfg, keys=JetStreamKeyStore(nc, keys.bucket))
    for reader in (store, other):  # this process's and a fresh one
        after = await reader.read_aggregate("s1")
        assert [r.version for r in after] == [r.version for r in before]
        assert [r.stream_seq for r in after] == [r.stream_seq for r in before]
        assert [r.event_id for r in after] == [r.event_id for r in before]
        assert after[0].event == before[0].event  # unsealed history reads as it was
        assert after[1].event == ev.DecisionAdded(
            decision_id="d1", title="T1", author=ERASED, affects=["x"]
        )
        assert after[2].event == before[2].event  # bob's assignee still opens
        assert dict(after[2].envelope.metadata) == {"actor": ERASED, "team": "red"}
        assert after[3].event == before[3].event
    assert key_of_alice not in stream_bytes(nats_server, keys.stream)  # overwritten
    assert not (await keys.erase(alice)).existed  # twice: nothing left to destroy

    # Alice writes again: a new key, readable; her old fields stay erased.
    await store.append("s1", [NewEvent(ev.DecisionAdded(decision_id="d2", author=alice))], 4)
    again = await other.read_aggregate("s1")
    assert again[-1].event.author == alice  # type: ignore[union-attr]
    assert again[1].event.author == ERASED  # type: ignore[union-attr]
    await other.close()


def zlib_texts(data: bytes) -> bytes:
    """Whatever inflates from any zlib stream in ``data`` (snapshot states are stored
    zlib-compressed, so a plain byte scan would not see them)."""
    out = bytearray()
    at = data.find(b"\x78\x01")
    while at != -1:
        with contextlib.suppress(zlib.error):
            out += zlib.decompressobj().decompress(data[at:])
        at = data.find(b"\x78\x01", at + 1)
    return bytes(out)


def erase_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetsource", "erase", *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def text(message: Any) -> str:
    return text_format.MessageToString(message, as_utf8=True)


async def valkey_dump(settings: JetsourceSettings, prefix: str) -> str:
    """Every key and value a read model keeps in Valkey under its prefix."""
    import valkey.asyncio as valkey

    client = valkey.from_url(settings.valkey_url())
    out = []
    try:
        async for key in client.scan_iter(f"{prefix}*"):
            kind = (await client.type(key)).decode()
            if kind == "string":
                value: Any = await client.get(key)
            elif kind == "hash":
                value = await client.hgetall(key)
            elif kind == "zset":
                value = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                value = await client.lrange(key, 0, -1)
            elif kind == "set":
                value = await client.smembers(key)
            else:
                value = kind
            out.append(f"{key!r}={value!r}")
    finally:
        await client.aclose()
    assert out, f"nothing in Valkey under {prefix}"
    return "\n".join(out)


async def test_erasure_reaches_every_reader(
    settings: JetsourceSettings, nats_server: Server, unique: str, tmp_path: Path
) -> None:
    """Publisher, projector, snapshotter and query run (and keep their caches) through
    the erase; afterwards nothing of alice is readable anywhere, and everything else
    (other fields, bob's, versions, sequences, event ids) reads as before."""
    alice, bob = f"alice-{unique}", f"bob-{unique}"
    base = projector_settings(settings, unique, snapshots={"every": EVERY})
    shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
    publisher = await build_publisher(
        PublisherSettings(**shared, publisher=PublisherOptions(grpc_port=0, metrics_port=0))
    )
    stop = asyncio.Event()
    projector = ProjectorService(await open_projection(base))
    snap = SnapshotterSettings(
        **shared,
        projector=base.projector,
        snapshotter=SnapshotterOptions(**{**base.projector.model_dump(), "models": ["snapshots"]}),
    )
    snapshotter = ProjectorService(await open_projection(snap.runtime()))
    tasks = [asyncio.create_task(s.run(stop)) for s in (projector, snapshotter)]
    query = await build_query(
        QuerySettings(
            **shared, projector=base.projector, query=QueryOptions(grpc_port=0, metrics_port=0)
        )
    )
    as_alice = ContextClient(f"127.0.0.1:{publisher.port}", actor=alice)
    as_bob = ContextClient(f"127.0.0.1:{publisher.port}", actor=bob)
    reads = QueryClient(f"127.0.0.1:{query.port}", timeout=10.0)
    stories = [f"a{unique}", f"b{unique}"]  # alice's story, and bob's alone
    try:
        s1, s2 = stories
        await as_alice.create_context(s1, "Alice's story", description="plans", tags=["x"])
        await as_alice.add_decision(s1, "d1", "Use NATS", body="because", rationale="fast")
        await as_bob.add_subtask(s1, "t1", "Build it", description="soon", assignee=alice)
        await as_bob.revise_decision(s1, "d1", body="because it is fast")
        await as_alice.update_subtask(s1, "t1", status="in_progress", assignee=bob, progress=10)
        await as_alice.add_decision(s1, "d2", "Use Valkey", rationale="cache")
        await as_bob.link_dependency(s1, "t1", "d2")
        await as_bob.create_context(s2, "Bob's story", description="alone")
        await as_bob.add_subtask(s2, "t9", "Bob's task", assignee=bob)
        last = await as_bob.add_decision(s1, "d3", "Use a graph")
        v1, v2 = int(last.version), 2

        async def settled(version: int, story: str) -> None:
            """Every model and the snapshotter have caught up with ``story``."""
            await reads.get_context(story, min_version=version)
            for _ in range(400):
                graph = None
                with contextlib.suppress(grpc.aio.AioRpcError):
                    graph = await reads.graph(story, depth=1)
                at = await reads.at_version(story, version)
                if (
                    graph is not None
                    and graph.version == version
                    and at.snapshot_version == version - version % EVERY
                ):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{story} v{version} not projected in time")

        await settled(v1, s1)
        await settled(v2, s2)

        async def everything(story: str, upto: int) -> dict[str, list[str]]:
            """What the query API says of a story: now, each version, its events, graph."""
            graph = await reads.graph(story, depth=2)
            return {
                "now": [text((await reads.get_context(story)).context)],
                "versions": [
                    text((await reads.at_version(story, v)).context) for v in range(1, upto + 1)
                ],
                "events": [text(e) for e in (await reads.list_events(story, limit=100)).events],
                "graph": sorted(text(n) for n in graph.nodes),
            }

        async def snapshot_states() -> str:
            """Every stored snapshot, its state decoded (it is compressed at rest)."""
            found = [
                (s.aggregate_id, s.version, zlib.decompress(s.state).decode())
                async for s in projector.projection.snapshots.all()
            ]
            assert found
            return repr(found)

        graph_model: Any = projector.projection.model("graph", 1)
        before = {s: await everything(s, v) for s, v in ((s1, v1), (s2, v2))}
        # The checks below can see her: before the erase she is in every one of them.
        assert alice in repr(before[s1]["now"]) and alice in repr(before[s1]["events"])
        assert alice in await valkey_dump(settings, f"t{unique}")
        assert alice in repr(await graph_model.dump())
        assert alice in await snapshot_states()
        assert alice.encode() in zlib_texts(stream_bytes(nats_server, base.snapshots.stream))
        # ... except the event stream: sealed from the start; so are archive segments
        # (they hold the envelopes as stored).
        assert alice.encode() not in stream_bytes(nats_server, base.eventstore.stream)
        live = projector.projection.store
        archive = Archive(LocalObjectStore(tmp_path / "archive"), base.eventstore.stream)
        assert await Archiver(live, None, archive).export()
        archived = await archive.messages()
        assert len(archived) == v1 + v2
        assert not any(alice.encode() in m.data for m in archived)
        opened = [await open_record(live, to_raw(m)) for m in archived]
        assert alice in repr([r.event for r in opened])

        env = environment(base)
        refused = erase_cli(env, alice)
        assert refused.returncode == 2 and "--yes" in refused.stderr
        done = erase_cli(env, alice, "--yes", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["key_destroyed"] and report["aggregates"] == {"context": [s1]}
        assert not report["failed"]

        # The running services go on with the story (their caches held alice's values)
        # across a snapshot boundary.
        as_carol = ContextClient(f"127.0.0.1:{publisher.port}", actor=f"carol-{unique}")
        for n in range(EVERY):
            last = await as_carol.add_decision(s1, f"e{n}", f"later {n}")
        await as_carol.close()
        v1_after = int(last.version)
        await settled(v1_after, s1)

        after = {s: await everything(s, v) for s, v in ((s1, v1), (s2, v2))}
        leaks = [(s, part) for s in after for part in after[s] if alice in repr(after[s][part])]
        assert not leaks, f"alice is still readable from the query API: {leaks}"
        # Everything else reads as before: the same text with alice's values erased
        # (versions, sequences, event ids, bob's values, titles, bodies, times).
        assert after[s2] == before[s2]
        assert after[s1]["versions"] == [t.replace(alice, ERASED) for t in before[s1]["versions"]]
        assert after[s1]["events"][:v1] == [t.replace(alice, ERASED) for t in before[s1]["events"]]
        assert len(after[s1]["events"]) == v1_after
        assert ERASED in after[s1]["now"][0]
        assert alice not in await valkey_dump(settings, f"t{unique}")
        assert alice not in repr(await graph_model.dump())
        assert alice not in await snapshot_states()
        # The replaced snapshots were deleted securely: not even their bytes on disk.
        assert alice.encode() not in zlib_texts(stream_bytes(nats_server, base.snapshots.stream))
        assert alice.encode() not in stream_bytes(nats_server, base.eventstore.stream)
        # Archive readers (time travel before a horizon, restore, rebuilds) open the
        # same boxes: erased there too, everything else as it was.
        reopened = [await open_record(live, to_raw(m)) for m in await archive.messages()]
        assert alice not in repr([(r.event, r.envelope) for r in reopened])
        assert ERASED in repr([r.event for r in reopened])
        assert [(r.stream_seq, r.version, r.event_id) for r in reopened] == [
            (r.stream_seq, r.version, r.event_id) for r in opened
        ]
        again = erase_cli(env, alice, "--yes")
        assert again.returncode == 0 and "already gone" in again.stdout
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in (as_alice, as_bob):
            await c.close()
        await reads.close()
        await query.stop(0)
        await publisher.stop(0)
        for service in (projector, snapshotter):
            for name in ("context", "timeline", "graph"):
                with contextlib.suppress(Exception):
                    await service.projection.model(name, 1).drop()
            await service.projection.close()


def test_erase_refuses_bad_input_before_connecting() -> None:
    """A usage error (exit 2) names what is wrong and changes nothing: nothing connects
    (the NATS URL here answers nothing). A missing --yes: see the test above."""
    away = {"JETSOURCE_NATS__URL": "nats://127.0.0.1:9", "JETSOURCE_ADMIN_CONNECT_TIMEOUT_S": "1"}
    # "" names no one; a control character is no subject any write path records. (A
    # subject of spaces is one: the context write path records such an actor, so erase
    # takes it: tests/integration/test_erase_subject_as_recorded.py.)
    for subject in ("", "a\x1bb"):
        blank = erase_cli(away, subject, "--yes", "--json")
        assert blank.returncode == 2, (subject, blank.stderr)
        error = json.loads(blank.stderr.strip().splitlines()[-1])["error"]
        assert error["code"] == "INVALID_ARGUMENT" and "subject" in error["message"]


async def test_an_erase_that_fails_half_way_is_finished_by_running_it_again(
    settings: JetsourceSettings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that cannot be written during the erase is reported (exit 1 from the
    CLI) and left as it was; the key is gone already, so running the erase again
    finds the same aggregates and finishes the work. Nothing is lost or done twice."""
    from jetsource.projection import admin, erasure

    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    alice = f"alice-{unique}"
    async with running_projector(settings, unique) as (_, p):
        await append_story(p, alice, actor=True)

        async def both_models_name_alice() -> bool:
            dump = await valkey_dump(settings, f"t{unique}")
            return dump.count(alice) >= 2 and "timeline" in dump

        await eventually(both_models_name_alice)
        assert alice in await valkey_dump(settings, f"t{unique}")

        real = admin.replay

        async def timeline_away(q: Any, name: str, **kw: Any) -> Any:
            if name == "timeline":
                raise ConnectionError("Valkey away")
            return await real(q, name, **kw)

        monkeypatch.setattr(admin, "replay", timeline_away)
        first = await erasure.erase_subject(p, alice)
        assert first.key_destroyed and first.aggregates == {"context": ["s1"]}
        assert first.failed and all(f.startswith("timeline s1") for f in first.failed)
        assert first.models["context"]["aggregates"] == 1
        monkeypatch.setattr(admin, "replay", real)

        second = await erasure.erase_subject(p, alice)
        assert not second.key_destroyed and not second.failed
        assert second.aggregates == {"context": ["s1"]}
        assert alice not in await valkey_dump(settings, f"t{unique}")
        events = await p.store.read_aggregate("s1")
        assert [e.version for e in events] == [1, 2]
        assert [e.event.created_by for e in events[:1]] == [ERASED]  # type: ignore[union-attr]
