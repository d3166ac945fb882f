"""Issue 23, freshness: the context model stores a story as a hash (the document's
shell and one field per node) and a batch writes only what changed. Checked here:
after batches (adds, revisions, progress, links; removals by crafted states) the hash
equals what a clean rewind at the same version writes, ``read`` gives exactly the
whole document's ``json.loads``, a batch touching one node of a big story sends that
node only, and a story stored in the earlier layout (one JSON string) reads as it is
and is written whole the next time."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from types import MappingProxyType
from typing import Any, cast

import pytest
from valkey.asyncio import Valkey

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.context.model import ContextState, fold
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.serialize import state_to_dict
from jetsource.domains.context.valkey_models import ContextModel, _diff, context_spec
from jetsource.eventstore.port import EventStore
from tests.infra import Server

pytestmark = pytest.mark.integration

T0 = 1_800_000_000_000_000_000


def recorded(story: str, history: list[Any], seq0: int = 0) -> list[RecordedEvent]:
    out = []
    for i, message in enumerate(history):
        env = EventEnvelope(
            aggregate_id=story,
            aggregate_version=i + 1,
            event_type=type(message).__name__,
            event_id=f"{story}-{i + 1}",
        )
        seq = seq0 + i + 1
        out.append(RecordedEvent(env, message, seq, T0 + seq * 1_000_000))
    return out


def whole_document(meta: dict[str, Any], state: ContextState) -> dict[str, Any]:
    """What the model's documents read as: json.loads of the whole document."""
    doc = {**meta, "status": "closed" if state.closed else "open", "state": state_to_dict(state)}
    return cast(dict[str, Any], json.loads(json.dumps(doc, separators=(",", ":"), sort_keys=True)))


class Recorder:
    """The model's apply script, with the arguments of each call kept."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.calls: list[list[Any]] = []

    async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        self.calls.append(list(args or []))
        return await self.script(keys=keys, args=args, client=client)


@pytest.fixture
async def redis(valkey_server: Server) -> AsyncIterator[Valkey]:
    client = Valkey.from_url(valkey_server.url)
    yield client
    await client.aclose()


def model(redis: Valkey, prefix: str, cache_size: int = 1000) -> ContextModel:
    return ContextModel(context_spec(1), redis, prefix, cast(EventStore, None), cache_size)


async def stored(m: ContextModel, story: str) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], await m.redis.hgetall(f"{m.ns}:doc:{story}"))


async def test_batches_write_what_a_clean_rewind_writes(redis: Valkey, unique: str) -> None:
    live, clean = model(redis, f"t{unique}a"), model(redis, f"t{unique}b")
    rng = random.Random(7)
    stories = {f"s{n}": recorded(f"s{n}", story_events(f"s{n}", 150, n)) for n in range(3)}
    try:
        for story, events in stories.items():
            i = 0
            while i < len(events):
                size = rng.randint(1, 12)
                # Redelivered events ride along: already stored, they change nothing.
                batch = events[max(0, i - rng.randint(0, 3)) : i + size]
                outcome = await live.apply(batch)
                assert not outcome.failed and not outcome.waiting
                i += size
                if rng.random() < 0.2:
                    live._cache.clear()  # next batch loads the story from the hash
                version = min(i, len(events))
                await clean.rewind(story, version, events=events)
                assert await stored(live, story) == await stored(clean, story)
                meta = {
                    "seq": events[version - 1].stream_seq,
                    "applied": version,
                    "created_at": events[0].recorded_at_ns,
                    "updated_at": events[version - 1].recorded_at_ns,
                }
                state = fold((e.event for e in events[:version]), context_id=story)
                expected = whole_document(meta, state)
                doc = await live.read(story)
                # The same dict, keys in the same order too.
                assert json.dumps(doc) == json.dumps(expected)
        assert await live.read_many([*stories, "nothing"]) == [
            await clean.read(s) for s in [*stories, "nothing"]
        ]
        assert await live.digest() == await clean.digest()
        # Listings read the shell only: the document with its nodes left empty.
        for story, shell in zip(stories, await live.read_shells(list(stories)), strict=True):
            doc = await live.read(story)
            assert doc is not None and shell is not None
            doc["state"].update(decisions={}, subtasks={}, dependencies=[])
            assert shell == doc
        assert (await live.read_shells(["nothing"])) == [None]
    finally:
        await live.drop()
        await clean.drop()


async def test_removed_nodes_are_deleted_from_the_hash(redis: Valkey, unique: str) -> None:
    """The domain never removes a node; the diff and the script do it all the same."""
    live, clean = model(redis, f"t{unique}a"), model(redis, f"t{unique}b")
    events = recorded("s", story_events("s", 80))
    try:
        await live.apply(events)
        old = fold((e.event for e in events), context_id="s")
        drop_d, drop_t = sorted(old.decisions)[:2], sorted(old.subtasks)[-1:]
        assert old.dependencies and drop_d and drop_t
        new = replace(
            old,
            version=old.version + 1,
            title="renamed",
            decisions=MappingProxyType({k: v for k, v in old.decisions.items() if k not in drop_d}),
            subtasks=MappingProxyType({k: v for k, v in old.subtasks.items() if k not in drop_t}),
            dependencies=frozenset(sorted(old.dependencies)[1:]),
        )
        meta = {"seq": 99, "applied": 81, "created_at": 1, "updated_at": 2}
        for m, before in ((live, old), (clean, None)):
            sets, dels = m._fields(meta, before, new)
            if before is not None:
                assert len(sets) == 2 and len(dels) == 4  # the shell; 2 + 1 + 1 removed
            args = [m.ns, 1, "s", old.version if before else 0, new.version, 99, 2, "open", 1]
            args += [0 if before else 1, len(sets) // 2, len(dels), *sets, *dels]
            args.append(0)  # no refused sequences to remember
            assert await m._apply(args=args) == [[], []]
        assert await stored(live, "s") == await stored(clean, "s")
        assert await live.read("s") == whole_document(meta, new)
    finally:
        await live.drop()
        await clean.drop()


async def test_a_batch_touching_one_node_of_a_big_story_sends_that_node(
    redis: Valkey, unique: str
) -> None:
    m = model(redis, f"t{unique}")
    events = recorded("big", story_events("big", 2000))
    try:
        await m.apply(events[:-2])
        whole = sum(len(v) for v in (await stored(m, "big")).values())
        assert whole > 100_000
        recorder = Recorder(m._apply)
        m._apply = recorder  # type: ignore[assignment]  # records, then calls the script
        for event in events[-2:]:
            recorder.calls.clear()
            await m.apply([event])
            (args,) = recorder.calls
            nset, ndel = args[10], args[11]
            # The shell, and the node the event added or changed (none: a close).
            assert nset in (1, 2) and ndel == 0, args[:12]
            assert sum(len(str(a)) for a in args) < 3_000, whole
            m._cache.clear()  # the next one loads the story from the hash: the same
        last = events[-1]
        assert await m.read("big") == whole_document(
            {
                "seq": last.stream_seq,
                "applied": len(events),
                "created_at": events[0].recorded_at_ns,
                "updated_at": last.recorded_at_ns,
            },
            fold((e.event for e in events), context_id="big"),
        )
    finally:
        await m.drop()


async def test_a_story_in_the_earlier_layout_reads_and_is_written_whole(
    redis: Valkey, unique: str
) -> None:
    m, clean = model(redis, f"t{unique}a"), model(redis, f"t{unique}b")
    events = recorded("old", story_events("old", 40))
    try:
        # What the earlier layout stored: the whole document as one JSON string.
        meta = {
            "seq": 30,
            "applied": 30,
            "created_at": events[0].recorded_at_ns,
            "updated_at": events[29].recorded_at_ns,
        }
        state = fold((e.event for e in events[:30]), context_id="old")
        text = json.dumps(
            {**meta, "status": "open", "state": state_to_dict(state)},
            separators=(",", ":"),
            sort_keys=True,
        )
        await redis.set(f"{m.ns}:doc:old", text)
        await redis.hset(f"{m.ns}:pos", "old", 30)
        assert await m.read("old") == json.loads(text)
        assert await m.read_many(["old", "none"]) == [json.loads(text), None]
        assert await m.read_shells(["old", "none"]) == [json.loads(text), None]
        outcome = await m.apply(events[30:35])
        assert outcome.applied == 5
        await clean.rewind("old", 35, events=events)
        assert await stored(m, "old") == await stored(clean, "old")

        # Cached, then overwritten by a writer of the earlier layout at the same
        # version: a partial write is refused (the stored version "moved"); the next
        # try loads the string and writes the story whole.
        await redis.set(f"{m.ns}:doc:old", json.dumps(await clean.read("old")))
        outcome = await m.apply(events[35:])
        assert outcome.waiting and not outcome.done
        assert (await m.apply(events[35:])).applied == 5
        await clean.rewind("old", 40, events=events)
        assert await stored(m, "old") == await stored(clean, "old")
    finally:
        await m.drop()
        await clean.drop()


def test_the_diff_of_two_maps_in_any_order() -> None:
    a, b, c, d = (object() for _ in range(4))
    before = MappingProxyType({"x": a, "y": b, "z": c})
    # A fold's copy: same order, one replaced, one appended.
    assert _diff(before, MappingProxyType({"x": a, "y": d, "z": c, "w": a})) == (["y", "w"], [])
    # Another order (a state read back from the hash): key by key.
    assert _diff(before, MappingProxyType({"z": c, "x": d, "y": b})) == (["x"], [])
    assert _diff(before, MappingProxyType({"z": d, "w": b})) == (["z", "w"], ["x", "y"])
    assert _diff(before, before) == ([], [])
