"""`--dry-run` on the destructive operator commands: it says what the real run would do
(the same keys in JSON, plus ``"dry_run": true``), changes nothing, and the real run
then does what it said."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.projection.bootstrap import Projection
from jetsource.projection.settings import ProjectorSettings
from tests.cli_env import jetsource
from tests.infra import Server
from tests.integration.test_erasure import erase_cli, valkey_dump
from tests.integration.test_repair_cli import junk_in_s1
from tests.projector_fixtures import (
    append_story,
    eventually,
    running_projector,
    timeline_reached,
)
from tests.stack import environment

pytestmark = pytest.mark.integration


async def story_models_dump(settings: JetsourceSettings, unique: str) -> str:
    """The context domain's Valkey models (context, timeline) under the test's prefix. The
    projector service these tests run also runs the process and omni models, which write
    under the same prefix at their own pace (building from their replay start): a dump of
    the whole prefix changed under a dry run that wrote nothing (CI, stop 52)."""
    return "".join([await valkey_dump(settings, f"t{unique}:{m}") for m in ("context", "timeline")])


async def answer(p: Projection, *args: str) -> Any:
    """``jetsource projector ARGS --json``: it exits 0 (else its stderr is said), and
    what it answers."""
    from tests.integration.test_admin_contract import cli

    run = await cli(p, *args, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture
async def projector_service(
    settings: JetsourceSettings, unique: str
) -> AsyncIterator[tuple[ProjectorSettings, Projection]]:
    """``running_projector`` for the length of a test: its settings and projection."""
    async with running_projector(settings, unique) as running:
        yield running


async def test_erase_dry_run_names_the_plan_and_changes_nothing(
    settings: JetsourceSettings,
    unique: str,
    projector_service: tuple[ProjectorSettings, Projection],
) -> None:
    """`erase SUBJECT --dry-run` (no --yes needed) says the key would be destroyed and
    which aggregates and model versions would be written again; the key, the stream
    and the read models stay as they were; the erase then does exactly that."""
    alice = f"alice-{unique}"
    base, p = projector_service
    await append_story(p, alice, actor=True)
    await p.store.append("s2", [NewEvent(ev.ContextCreated(title="U", created_by="bob"))], 0)

    async def both_models_name_alice() -> bool:
        dump = await story_models_dump(settings, unique)
        return dump.count(alice) >= 2 and "timeline" in dump

    await eventually(both_models_name_alice)
    await asyncio.sleep(0.3)
    before = await story_models_dump(settings, unique)
    assert alice in before
    keys = p.store.keys
    ref = await keys.ref_of(alice)
    assert ref is not None and await keys.holds(ref)
    stream = base.eventstore.stream
    info = await jsapi.api(p.store._replies, f"STREAM.INFO.{stream}", {}, 5)

    env = environment(base)
    dry = erase_cli(env, alice, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True
    assert plan["key_destroyed"] is True and plan["subject_ref"] == ref.hex()
    assert plan["aggregates"] == {"context": ["s1"]} and not plan["failed"]
    planned = {m: e["versions"] for m, e in plan["models"].items() if e["versions"]}
    assert planned and all(v == {"1": 1} for v in planned.values())
    text = erase_cli(env, alice, "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "would be destroyed" in text.stdout and "s1" in text.stdout

    # Nothing changed: the key, the stream, the read models.
    assert await keys.holds(ref)
    again = await jsapi.api(p.store._replies, f"STREAM.INFO.{stream}", {}, 5)
    assert again["state"]["last_seq"] == info["state"]["last_seq"]
    assert again["state"]["messages"] == info["state"]["messages"]
    assert await story_models_dump(settings, unique) == before

    done = erase_cli(env, alice, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "dry_run" not in report
    assert set(plan) - {"dry_run"} == set(report)
    assert report["key_destroyed"] and report["aggregates"] == plan["aggregates"]
    assert {m: e["versions"] for m, e in report["models"].items() if e["versions"]} == planned
    assert not await keys.holds(ref)
    assert alice not in await story_models_dump(settings, unique)


async def test_repair_void_dry_run_names_the_void_and_records_nothing(
    nats_server: Server, valkey_server: Server, unique: str
) -> None:
    """`repair void --dry-run` (no --yes needed) names the stream, domain, aggregate and
    that it would be voided; the stream gets no void record; the void then voids the
    same aggregate; a dry run of a sequence holding no event is refused as the void is."""
    async with junk_in_s1(nats_server.url, valkey_server.url, unique) as junk:
        env, nc, cfg, store, seq = junk
        await store.start()
        info = await jsapi.api(store._replies, f"STREAM.INFO.{cfg.stream}", {}, 5)
        args = ("--seq", str(seq), "--reason", "junk", "--domain", "context")

        nothing = jetsource(env, "repair", "void", "--seq", "999999", "--reason", "r", "--dry-run")
        assert nothing.returncode == 1 and "holds no event" in nothing.stderr
        dry = jetsource(env, "repair", "void", *args, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["dry_run"] is True
        assert (plan["seq"], plan["aggregate_id"], plan["voided_before"]) == (seq, "s1", False)
        assert (plan["domain"], plan["stream"]) == ("context", cfg.stream)
        text = jetsource(env, "repair", "void", *args, "--dry-run")
        assert text.returncode == 0, text.stderr
        assert f"stream sequence {seq} of {cfg.stream} (context)" in text.stdout
        assert "aggregate s1: would be voided" in text.stdout

        after = await jsapi.api(store._replies, f"STREAM.INFO.{cfg.stream}", {}, 5)
        assert after["state"]["last_seq"] == info["state"]["last_seq"]  # no void record
        assert not await store.voided("s1", seq)
        with pytest.raises(CorruptEventError):
            await JetStreamEventStore(nc, registry, cfg).read_aggregate("s1")

        done = jetsource(env, "repair", "void", *args, "--yes", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert set(plan) - {"dry_run"} == set(report)
        assert (report["seq"], report["aggregate_id"], report["voided_before"]) == (
            seq,
            "s1",
            False,
        )
        assert await JetStreamEventStore(nc, registry, cfg).read_aggregate("s1") == []
        again = jetsource(env, "repair", "void", *args, "--dry-run", "--json")
        assert json.loads(again.stdout)["voided_before"] is True


async def test_repair_void_dry_run_leaves_what_only_the_void_knows_null(
    settings: JetsourceSettings, unique: str
) -> None:
    """`repair void --dry-run` (plan_void's summary) of an event a model applied: what
    failed and what is left to rebuild is known only by voiding, so both are null (the
    dry run said ``"left_to_rebuild": []`` and ``"failed": {}`` as if known)."""
    from jetsource.projection.repair import plan_void
    from tests.projector_fixtures import build_context_v1, context_projection

    async with context_projection(settings, unique) as p:
        await p.store.append(
            "s1",
            [
                NewEvent(ev.ContextCreated(title="T", created_by="x")),
                NewEvent(ev.DecisionAdded(decision_id="d1", title="D")),
            ],
            0,
        )
        seq = (await p.store.read_aggregate("s1"))[-1].stream_seq
        await build_context_v1(p)
        plan = (await plan_void(p, seq, "context")).summary()
        assert plan["left_to_rebuild"] is None
        assert plan["models"] == {"context v1": {"failed": None, "would_replay": True}}


async def test_archive_compact_dry_run_counts_the_plan_and_purges_nothing(
    nats_server: Server, nc: Any, unique: str, tmp_path: Path
) -> None:
    """`archive compact --dry-run` counts what would be archived and purged (and in how
    many segments) from the same checks and choice of events; the stream keeps every
    event and no segment is written; the compaction then does those counts."""
    from tests.integration.archive import test_cli as archive_cli

    archive = tmp_path / "archive"
    env = archive_cli.environment(nats_server.url, unique, archive)
    store, _ = await archive_cli.compactable(nc, unique)
    info = (await store.stream_info())["state"]

    plan = archive_cli.ok(env, "compact", "--dry-run")
    assert plan["dry_run"] is True and plan["segments"] == [] and plan["would_seal"] == 1
    assert (plan["archived"], plan["purged"], plan["aggregates"]) == (20, 20, 1)
    assert "cli2" in plan["kept"]
    text = archive_cli.cli(env, "compact", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert text.stdout == (  # cli2's 5 events are older than the horizon and stay
        f"AE_{unique}: would archive 20 events of 1 aggregate in 1 segment and purge 20; "
        f"1 aggregate keeps old events ({plan['scanned']} older than the horizon)\n"
    ), plan
    state = (await store.stream_info())["state"]
    assert (state["messages"], state["first_seq"], state["last_seq"]) == (
        info["messages"],
        info["first_seq"],
        info["last_seq"],
    )
    assert not any(p.is_file() for p in archive.rglob("*"))  # no segment, no manifest
    assert [r.version for r in await store.read_aggregate("cli1")][:1] == [1]

    report = archive_cli.ok(env, "compact")
    assert set(plan) - {"dry_run", "would_seal"} == set(report)
    assert (report["archived"], report["purged"], report["aggregates"]) == (20, 20, 1)
    assert len(report["segments"]) == plan["would_seal"]
    assert (await store.stream_info())["state"]["messages"] == info["messages"] - 20


async def test_replay_dry_run_selects_the_slice_and_records_no_run(
    settings: JetsourceSettings,
    unique: str,
    projector_service: tuple[ProjectorSettings, Projection],
) -> None:
    """admin.replay(dry_run=True) (`projector replay --dry-run`) selects the slice as
    the replay does (same events, stories, last sequence) and writes nothing: no run in
    the model's control entry, the read model as it was; the replay then replays that."""
    from jetsource.projection import admin

    _, p = projector_service
    await append_story(p, "a")
    last = await p.store.append("s2", [NewEvent(ev.ContextCreated(title="U"))], 0)
    await eventually(lambda: timeline_reached(p, last.stream_seqs[-1]))
    before = await p.control.get("timeline")
    assert before is not None and before.last_replay is None
    dump = await story_models_dump(settings, unique)
    assert f"t{unique}:timeline" in dump  # the model's keys are in the dump

    with pytest.raises(admin.UsageError):  # the same refusal of a bad slice
        await admin.replay(p, "timeline", from_seq=5, to_seq=2, dry_run=True)
    plan = await admin.replay(p, "timeline", aggregate_id="s1", dry_run=True)
    assert (plan.events, plan.aggregates, plan.failed) == (2, 1, {})
    assert plan.last_seq == (await p.store.read_aggregate("s1"))[-1].stream_seq
    assert plan.reapplied == plan.carried_forward == 0
    after = await p.control.get("timeline")
    assert after is not None and after.last_replay is None
    assert await story_models_dump(settings, unique) == dump

    done = await admin.replay(p, "timeline", aggregate_id="s1")
    assert (done.events, done.aggregates, done.last_seq) == (2, 1, plan.last_seq)
    recorded = await p.control.get("timeline")
    assert recorded is not None and recorded.last_replay is not None
    assert recorded.last_replay["run_id"] == done.run_id


async def test_projector_replay_dry_run_from_the_command_line(
    projector_service: tuple[ProjectorSettings, Projection],
) -> None:
    """`projector replay MODEL --aggregate ID --dry-run [--json]` says the slice (the
    replay's keys, what only the run knows as null, ``dry_run: true``) and records no
    run; a slice holding no applied event is refused as the replay refuses it."""
    base, p = projector_service
    last = await append_story(p, "a")
    await eventually(lambda: timeline_reached(p, last.stream_seqs[-1]))
    env = environment(base)
    args = ("projector", "replay", "timeline", "--aggregate", "s1", "--dry-run")
    dry = await asyncio.to_thread(jetsource, env, *args, "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["run_id"] is None
    assert (plan["events"], plan["aggregates"], plan["last_seq"]) == (
        2,
        1,
        last.stream_seqs[-1],
    )
    assert plan["reapplied"] is None and plan["failed"] == {}
    text = await asyncio.to_thread(jetsource, env, *args)
    assert text.returncode == 0, text.stderr
    assert "would replay 2 events" in text.stdout
    past = await asyncio.to_thread(
        jetsource, env, *args, "--from-seq", str(last.stream_seqs[-1] + 100)
    )
    assert past.returncode == 1 and "holds no event" in past.stderr
    control = await p.control.get("timeline")
    assert control is not None and control.last_replay is None

    done = await asyncio.to_thread(jetsource, env, *args[:-1], "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(plan) - {"dry_run"} == set(report)
    assert (report["events"], report["aggregates"]) == (plan["events"], plan["aggregates"])


async def test_projector_drop_dry_run_checks_and_deletes_nothing(
    settings: JetsourceSettings, unique: str
) -> None:
    """`projector drop MODEL --version N --dry-run` refuses what the drop refuses (the
    active version, one never built), names the version and its state, and deletes
    nothing: the version stays in the control entry with its data; the drop then
    deletes it."""
    from jetsource.projection import admin
    from tests.integration.test_admin_contract import cli
    from tests.projector_fixtures import build_context_v1, context_projection, seed

    async with context_projection(settings, unique) as p:
        await seed(p.store, ["s0", "s1"], 3)
        await build_context_v1(p)
        await admin.rebuild(p, "context", 2)
        v2 = p.model("context", 2)
        assert await v2.position("s0") == 3

        active = await cli(p, "drop", "context", "--version", "1", "--dry-run", "--json")
        assert active.returncode == 1 and "active" in active.stderr
        never = await cli(p, "drop", "context", "--version", "77", "--dry-run")
        assert never.returncode == 1 and "never built" in never.stderr
        plan = await answer(p, "drop", "context", "--version", "2", "--dry-run")
        assert plan == {
            "model": "context",
            "version": 2,
            "removed": None,
            "state": "live",
            "dry_run": True,
        }
        text = await cli(p, "drop", "context", "--version", "2", "--dry-run")
        assert "context v2 (live) would be dropped" in text.stdout, text.stderr
        control = await p.control.get("context")
        assert control is not None and control.versions.get(2) == "live"
        assert await v2.position("s0") == 3

        report = await answer(p, "drop", "context", "--version", "2")
        assert set(plan) - {"dry_run", "state"} == set(report) and report["removed"] > 0
        control = await p.control.get("context")
        assert control is not None and 2 not in control.versions


async def test_dlq_discard_dry_run_lists_the_letters_and_discards_nothing(
    settings: JetsourceSettings, unique: str
) -> None:
    """`projector dlq discard --aggregate ID --dry-run` (no --yes needed) lists the dead
    letters the discard would take and refuses the one behind another of its story,
    as the discard does; the letters stay and nothing is remembered as discarded; the
    discard then takes the same letters."""
    from tests.integration.test_admin_contract import cli
    from tests.projector_fixtures import build_context_v1, context_projection, seed

    async with context_projection(settings, unique) as p:
        await seed(p.store, ["s0"], 3)
        prefix = p.store.settings.subject_prefix
        junk = []
        for _ in range(2):  # two letters of s0: the second is behind the first
            ack = await p.nc.request(f"{prefix}.s0.DecisionAdded", b"\xff", 5)
            junk.append(int(json.loads(ack.data)["seq"]))
        await build_context_v1(p)
        letters = sorted(await p.dead_letters.list(p.spec("context", 1)), key=lambda d: d.dlq_seq)
        assert [d.original_seq for d in letters] == junk
        first, second = (d.dlq_seq for d in letters)

        behind = await cli(p, "dlq", "discard", "--seq", str(second), "--dry-run", "--json")
        assert behind.returncode == 0, behind.stderr
        assert json.loads(behind.stdout)["would_discard"] == []
        assert "behind dead letter" in json.loads(behind.stdout)["failed"][str(second)]
        plan = await answer(p, "dlq", "discard", "--aggregate", "s0", "--dry-run")
        # Nothing discarded (null, as the retry's applied), what would be: would_discard.
        assert plan == {
            "discarded": None,
            "failed": {},
            "would_discard": [first, second],
            "dry_run": True,
        }
        text = await cli(p, "dlq", "discard", "--aggregate", "s0", "--dry-run")
        assert f"would discard 2 dead letters: [{first}, {second}]" in text.stdout, text.stderr
        still = await p.dead_letters.list(p.spec("context", 1))
        assert sorted(d.dlq_seq for d in still) == [first, second]
        control = await p.control.get("context")
        assert control is not None and not control.discarded

        report = await answer(p, "dlq", "discard", "--aggregate", "s0", "--yes")
        assert set(plan) - {"dry_run", "would_discard"} == set(report)
        assert report["discarded"] == plan["would_discard"]
        assert await p.dead_letters.list(p.spec("context", 1)) == []


async def test_projector_reset_dry_run_names_the_version_and_empties_nothing(
    settings: JetsourceSettings, unique: str
) -> None:
    """`projector reset MODEL --dry-run` (no --yes needed) names the active version it
    would empty, its state and checkpoint; the version keeps its data and state (the
    control entry is not written, a key only the first build wrote stays); the reset
    then empties and rebuilds that version."""
    from tests.integration.test_admin_contract import cli
    from tests.projector_fixtures import build_context_v1, context_projection, seed

    async with context_projection(settings, unique) as p:
        await seed(p.store, ["s0", "s1"], 3)
        v1 = await build_context_v1(p)
        checkpoint = (await v1.checkpoint()).seq
        # A key the build wrote that the rebuild does not write again: a real reset
        # empties the namespace, so it goes.
        marker = f"{p.settings.projector.valkey_prefix}:context:v1:zz-only-the-first-build"
        await p.redis.set(marker, "1")
        before = await p.control.get("context")
        assert before is not None

        plan = await answer(p, "reset", "context", "--dry-run")
        assert plan["dry_run"] is True and plan["applied"] is None
        assert (plan["model"], plan["version"], plan["state"], plan["checkpoint"]) == (
            "context",
            1,
            "live",
            checkpoint,
        )
        text = await cli(p, "reset", "context", "--dry-run")
        assert "context v1 (live, checkpoint" in text.stdout, text.stderr
        assert "would be emptied" in text.stdout
        control = await p.control.get("context")
        assert control is not None and control.versions[1] == "live"
        assert control.revision == before.revision  # nothing marked, claimed or built
        assert await p.redis.exists(marker)
        assert (await v1.checkpoint()).seq == checkpoint and await v1.position("s0") == 3

        report = await answer(p, "reset", "context", "--yes")
        assert set(plan) - {"dry_run", "state"} == set(report)
        assert (report["version"], report["checkpoint"]) == (1, checkpoint)
        assert report["applied"] == 6
        assert not await p.redis.exists(marker)  # the real reset emptied it


async def test_projector_reset_dry_run_says_a_build_goes_on_and_a_held_version_is_busy(
    settings: JetsourceSettings, unique: str
) -> None:
    """`projector reset --dry-run` of a version a stopped reset left ``building`` says
    the reset builds on from its checkpoint, emptying nothing (it said 'would be
    emptied'); of a version another run holds fresh it is refused Busy, as the real
    reset is (it said OK); the claim is only read, nothing written."""
    from jetsource.projection import admin
    from jetsource.projection.control import ModelControl
    from tests.integration.test_admin_contract import cli, error
    from tests.projector_fixtures import build_context_v1, context_projection, seed

    async with context_projection(settings, unique) as p:
        await seed(p.store, ["s0"], 3)
        await build_context_v1(p)

        def building(c: ModelControl) -> None:
            c.versions[1] = "building"

        await admin._save(p, "context", building)
        text = await cli(p, "reset", "context", "--dry-run")
        assert text.returncode == 0, text.stderr
        assert "context v1 (building, checkpoint" in text.stdout
        assert "would not be emptied again" in text.stdout
        assert "would be emptied and rebuilt" not in text.stdout

        other = admin.Lease(p, "context", 1, "reset")  # another run, fresh

        def claimed(c: ModelControl) -> None:
            c.claims[1] = other._body()

        held = await admin._save(p, "context", claimed)
        dry = error(await cli(p, "reset", "context", "--dry-run", "--json"), 1)
        assert dry["code"] == "busy" and "is being reset by another run" in dry["message"]
        real = error(await cli(p, "reset", "context", "--yes", "--json"), 1)
        said = [re.sub(r"heartbeat [0-9.]+ s ago", "", e["message"]) for e in (dry, real)]
        assert real["code"] == dry["code"] and said[0] == said[1]
        after = await p.control.get("context")
        assert after is not None and after.revision == held.revision


async def test_dlq_retry_dry_run_lists_the_letters_and_applies_nothing(
    settings: JetsourceSettings, unique: str
) -> None:
    """`projector dlq retry --aggregate ID --dry-run` lists the dead letters the retry
    would try, in order, and applies nothing (the letters stay, the model's position
    too); the retry then applies those letters. The letter is a good event a handler
    refused (it applies on retry), so a dry run that retried would lose it."""
    from jetsource.projection.runtime import Worker
    from tests.integration.test_admin_contract import cli
    from tests.integration.test_projector import FlakyContext
    from tests.projector_fixtures import context_projection, seed

    async with context_projection(settings, unique) as p:
        await seed(p.store, ["s0"], 3)
        await p.control.ensure("context", 1)
        o = p.settings.projector
        flaky = FlakyContext(
            p.model("context", 1).spec, p.redis, o.valkey_prefix, p.store, o.state_cache_size
        )
        flaky.poison = {(await p.store.read_aggregate("s0"))[-1].stream_seq}
        await Worker(p.nc, p.store, flaky, p.dead_letters, o).run(until_caught_up=True)
        [letter] = await p.dead_letters.list(p.spec("context", 1))
        v1 = p.model("context", 1)
        assert await v1.position("s0") == 2

        plan = await answer(p, "dlq", "retry", "--aggregate", "s0", "--dry-run")
        assert plan == {
            "applied": None,
            "failed": {},
            "would_retry": [letter.dlq_seq],
            "dry_run": True,
        }
        text = await cli(p, "dlq", "retry", "--aggregate", "s0", "--dry-run")
        assert f"would retry 1 dead letter: [{letter.dlq_seq}]" in text.stdout, text.stderr
        assert [d.dlq_seq for d in await p.dead_letters.list(p.spec("context", 1))] == [
            letter.dlq_seq
        ]
        assert await v1.position("s0") == 2

        # The handler takes it now: applied.
        report = await answer(p, "dlq", "retry", "--aggregate", "s0")
        assert set(plan) - {"dry_run", "would_retry"} == set(report)
        assert report == {"applied": plan["would_retry"], "failed": {}}
        assert await p.dead_letters.list(p.spec("context", 1)) == []
        assert await v1.position("s0") == 3


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        # v1 (never built) has applied nothing: the slice holds no event it applied.
        (("replay", "context", "--aggregate", "s0", "--dry-run"), 1, "checkpoint is"),
        (("reset", "context", "--dry-run"), 0, "context v1 (live, checkpoint 0)"),
        (("drop", "context", "--version", "2", "--dry-run"), 1, "never built"),
    ],
    ids=["replay", "reset", "drop"],
)
async def test_a_dry_run_on_a_model_with_no_control_entry_writes_none(
    settings: JetsourceSettings, unique: str, args: tuple[str, ...], code: int, said: str
) -> None:
    """`projector replay|reset|drop --dry-run` on a model never built (no control
    entry, no control bucket) answers as for the entry a real run would make (v1 active
    and live) and writes neither: they created both (`status` then listed v1 live)."""
    from nats.js.errors import BucketNotFoundError

    from tests.integration.test_admin_contract import cli
    from tests.projector_fixtures import context_projection, seed

    async with context_projection(settings, unique) as p:
        await seed(p.store, ["s0"], 3)
        bucket = p.settings.projector.control_bucket
        with pytest.raises(BucketNotFoundError):
            await p.nc.jetstream().key_value(bucket)
        r = await cli(p, *args)
        assert r.returncode == code, r.stderr
        assert said in (r.stdout if code == 0 else r.stderr)
        with pytest.raises(BucketNotFoundError):
            await p.nc.jetstream().key_value(bucket)
        assert await p.control.get("context") is None
