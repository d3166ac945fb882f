"""`jetsource projector` admin commands against real servers, as scripts run them:
`--json` documents, errors on stderr, exit codes 0 ok / 1 refused / 2 usage / 3
unavailable; reset under live writes equal to a clean rebuild; selective replay by
each selector with its run id and last replayed event in `status --json`; slice
validation; dead letters oldest first; cutover to the active version refused; wait."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.core.clock import format_rfc3339_ns
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.samples import story_events
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.control import BUILDING, LIVE, RESETTING
from jetsource.projection.host import ProjectorService
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings, seed, story_ids

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, control_poll_s=0.2))
    yield p
    for name in MODELS:
        for version in (1, 2):
            await p.model(name, version).drop()
    await p.close()


def cli_env(p: Projection) -> dict[str, str]:
    """The test's isolated names as the JETSOURCE_* settings of a `jetsource` process."""
    s = p.settings
    o = s.projector
    assert s.graph.password is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env.pop("COLUMNS", None)
    return env | {
        "JETSOURCE_NATS__URL": s.nats_url(),
        "JETSOURCE_VALKEY__URL": s.valkey_url(),
        "JETSOURCE_GRAPH__URI": s.graph_uri(),
        "JETSOURCE_GRAPH__USER": s.graph.user,
        "JETSOURCE_GRAPH__PASSWORD": s.graph.password.get_secret_value(),
        "JETSOURCE_GRAPH__DATABASE": s.graph.database,
        "JETSOURCE_EVENTSTORE__STREAM": s.eventstore.stream,
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": s.eventstore.subject_prefix,
        "JETSOURCE_SNAPSHOTS__STREAM": s.snapshots.stream,
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": s.snapshots.subject_prefix,
        "JETSOURCE_PROJECTOR__DLQ_STREAM": o.dlq_stream,
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": o.dlq_subject_prefix,
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": o.control_bucket,
        "JETSOURCE_PROJECTOR__VALKEY_PREFIX": o.valkey_prefix,
        "JETSOURCE_PROJECTOR__GRAPH_LABEL_PREFIX": o.graph_label_prefix,
        "JETSOURCE_PROJECTOR__CONTROL_POLL_S": "0.2",
        "JETSOURCE_PROJECTOR__PULL_EXPIRES_S": "1.0",
        "JETSOURCE_PROGRESS_EVERY_S": "0.05",
    }


async def cli(p: Projection, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``jetsource projector ARGS``, piped (not a terminal), in a thread."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetsource", "projector", *args],
        env=cli_env(p),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def doc(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def error(result: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    """A JSON error on stderr with ``code``, nothing on stdout."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    body: dict[str, Any] = json.loads(result.stderr.strip().splitlines()[-1])["error"]
    assert body["exit_code"] == code
    return body


async def build(p: Projection, name: str, version: int = 1) -> Worker:
    await p.control.ensure(name, 1)
    worker = Worker(
        p.nc, p.store_for(name), p.model(name, version), p.dead_letters, p.settings.projector
    )
    await worker.run(until_caught_up=True)
    return worker


async def append_more(p: Projection, story: str, length: int) -> int:
    history = story_events(story, length + 1, 0)
    await p.store.append(story, [NewEvent(history[length])], length)
    return length + 1


async def test_reset_under_live_writes_equals_a_clean_rebuild(projection: Projection) -> None:
    p = projection
    p.settings.projector.models = ["context", "timeline"]
    stories = story_ids(6)
    await seed(p.store, stories, 30)
    lengths = dict.fromkeys(stories, 30)
    service = ProjectorService(p)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    writing = asyncio.Event()

    async def traffic() -> None:
        n = 0
        while not writing.is_set():
            story = stories[n % len(stories)]
            lengths[story] = await append_more(p, story, lengths[story])
            n += 1
            await asyncio.sleep(0.005)

    seen: set[str] = set()
    progress: list[dict[str, Any]] = []

    async def watch() -> None:
        while not writing.is_set():
            control = await p.control.get("context")
            if control is not None:
                seen.add(control.versions.get(1, "-"))
                if control.progress.get(1):
                    progress.append(control.progress[1])
            await asyncio.sleep(0.02)

    try:
        first = doc(await cli(p, "wait", "context", "--version", "1", "--timeout", "60", "--json"))
        assert first["state"] == LIVE and first["lag"] == 0
        tasks = [asyncio.create_task(traffic()), asyncio.create_task(watch())]
        await asyncio.sleep(0.5)
        refused = await cli(p, "reset", "context", "--json")
        assert error(refused, 2)["code"] == "INVALID_ARGUMENT"
        done = await cli(p, "reset", "context", "--yes", "--json")
        report = doc(done)
        assert (report["model"], report["version"], report["reset"]) == ("context", 1, True)
        assert report["applied"] > 0
        await asyncio.sleep(0.5)  # writes go on after the reset: the service resumes it
        writing.set()
        await asyncio.gather(*tasks)
        # Fenced, truncated, built by the command, live again.
        assert {RESETTING, BUILDING, LIVE} <= seen, seen
        assert any("phase" in e for e in progress)
        waited = doc(
            await cli(p, "wait", "-m", "context", "--version", "1", "--timeout", "60", "--json")
        )
        assert waited["lag"] == 0
        assert ("context", 1) in service.workers
        total = sum(lengths.values())
        v1 = p.model("context", 1)
        for _ in range(200):
            if (await v1.checkpoint()).applied >= total:
                break
            await asyncio.sleep(0.05)
        assert (await v1.checkpoint()).applied == total
        # A clean side-by-side build of the same stream equals the reset version.
        clean = await admin.rebuild(p, "context", 2)
        assert clean.applied == total
        assert await p.model("context", 2).digest() == await v1.digest()
        assert (await p.control.get("context")) is not None
        # Cutover to the version that is already active: refused, not silently done.
        body = error(await cli(p, "cutover", "context", "--to-version", "1", "--json"), 1)
        assert "already the active" in body["message"]
        # Wait for a version nobody builds: refused at once (exit 1), naming it; it
        # waited out the timeout and said "timeout".
        late = await cli(p, "wait", "context", "--version", "7", "--timeout", "60", "--json")
        body = error(late, 1)
        assert body["code"] == "refused" and "context v7 does not exist" in body["message"]
    finally:
        writing.set()
        stop.set()
        await running


async def test_build_progress_is_stored_and_printed_when_piped(projection: Projection) -> None:
    p = projection
    await seed(p.store, story_ids(20), 60)
    await build(p, "timeline")
    seen: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            control = await p.control.get("timeline")
            entry = control.progress.get(2) if control else None
            if entry and "percent" in entry:
                seen.append(entry)
            await asyncio.sleep(0.01)

    watching = asyncio.create_task(watch())
    result = await cli(p, "rebuild", "timeline", "--to-version", "2")
    stop.set()
    await watching
    assert result.returncode == 0, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("building timeline v2:")]
    assert lines, result.stderr
    assert "/1,200 (" in lines[-1] and "/s, ETA" in lines[-1]
    assert seen and {"done", "total", "percent", "rate", "eta_s"} <= set(seen[0])
    assert (await p.control.get("timeline")).progress == {}  # type: ignore[union-attr]
    rows = doc(await cli(p, "status", "--json"))
    v2 = next(r for r in rows if (r["model"], r["version"]) == ("timeline", 2))
    assert v2["state"] == LIVE and "progress" not in v2


async def test_replay_by_each_selector_and_status_shows_the_run(projection: Projection) -> None:
    p = projection
    stories = story_ids(4)
    actors = {"s0000": "ana", "s0001": "bob", "s0002": "ana", "s0003": "bob"}
    for story in stories:  # one after the other: each story's events are contiguous
        for i, m in enumerate(story_events(story, 20, 0)):  # one append per event
            await p.store.append(story, [NewEvent(m, metadata={"actor": actors[story]})], i)
    await build(p, "context")
    clean = await p.model("context", 1).digest()
    events = [e async for e in p.store.read_all()]
    s2 = [e for e in events if e.aggregate_id == "s0002"]

    async def replay(*args: str) -> dict[str, Any]:
        report: dict[str, Any] = doc(await cli(p, "replay", "context", *args, "--json"))
        assert report["run_id"] and report["failed"] == {}
        return report

    by_story = await replay("--aggregate", "s0000")
    assert (by_story["events"], by_story["aggregates"], by_story["last_seq"]) == (20, 1, 20)
    by_seq = await replay("--from-seq", "25", "--to-seq", "30")
    assert (by_seq["events"], by_seq["last_seq"], by_seq["selectors"]) == (
        6,
        30,
        {"from_seq": 25, "to_seq": 30},
    )
    by_time = await replay(
        "--from-time",
        format_rfc3339_ns(s2[0].recorded_at_ns),
        "--to-time",
        format_rfc3339_ns(s2[-1].recorded_at_ns),
    )
    assert by_time["events"] == 20 and by_time["aggregates"] == 1
    kind = events[3].event_type
    by_type = await replay("--type", kind)
    assert by_type["events"] == sum(1 for e in events if e.event_type == kind)
    assert by_type["selectors"] == {"types": [kind]}
    two = sorted({kind, events[0].event_type})
    by_types = await replay("--type", two[0], "--type", two[1])
    assert by_types["events"] == sum(1 for e in events if e.event_type in two)
    by_actor = await replay("--actor", "ana")
    assert by_actor["events"] == 40 and by_actor["aggregates"] == 2
    # "Replay events X to Y into model Z for user U".
    mixed = await replay("--from-seq", "10", "--to-seq", "50", "--actor", "ana", "--run-id", "r-1")
    assert (mixed["run_id"], mixed["events"], mixed["aggregates"]) == ("r-1", 11 + 10, 2)
    assert mixed["last_seq"] == 50
    assert await p.model("context", 1).digest() == clean

    # Validated slices: refused or usage errors, never a silent exit 0.
    inverted = await cli(p, "replay", "context", "--from-seq", "5000", "--to-seq", "10", "--json")
    assert "inverted" in error(inverted, 2)["message"]
    error(await cli(p, "replay", "contxt", "--from-seq", "1", "--json"), 2)
    error(await cli(p, "replay", "-m", "context", "--json"), 2)
    error(await cli(p, "replay", "context", "--type", "NoSuchEvent", "--json"), 2)
    at = "2026-01-01T00:00:00Z"
    error(await cli(p, "replay", "context", "--from-time", at, "--to-time", at, "--json"), 2)
    nothing = await cli(p, "replay", "context", "--aggregate", "no-such-story", "--json")
    assert "no events" in error(nothing, 1)["message"]
    error(await cli(p, "replay", "context", "--from-seq", "100000", "--json"), 1)
    error(await cli(p, "replay", "context", "--actor", "nobody", "--json"), 1)
    plain = await cli(p, "replay", "context", "--from-seq", "5000", "--to-seq", "10")
    assert plain.returncode == 2 and plain.stdout == "" and "inverted" in plain.stderr
    globally = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetsource", "--output", "json", "projector", "replay", "context"],
        env=cli_env(p),
        capture_output=True,
        text=True,
        timeout=60,
    )
    error(globally, 2)

    # status --json: every model of every domain, the last run and its last event.
    rows = doc(await cli(p, "status", "--json"))
    assert {r["model"] for r in rows} == set(p.model_names())
    assert all(r["state"] != "unavailable" for r in rows), rows
    context = next(r for r in rows if r["model"] == "context")
    assert context["last_replay"]["run_id"] == "r-1"
    assert context["last_replay"]["last_seq"] == 50
    assert context["last_replay"]["selectors"] == {"from_seq": 10, "to_seq": 50, "actor": "ana"}
    assert context["last_replay"]["finished_at"] and context["last_replay"]["state"] == "done"
    assert {"domain", "stream", "contract", "lag", "checkpoint"} <= set(context)
    table = await cli(p, "status")
    assert table.returncode == 0 and "r-1 seq 50" in table.stdout


async def test_dead_letters_oldest_first_and_json_everywhere(projection: Projection) -> None:
    p = projection
    await seed(p.store, story_ids(2), 5)
    prefix = p.store.settings.subject_prefix
    js = p.nc.jetstream()
    junk = [
        (await js.publish(f"{prefix}.{story}.DecisionAdded", b"\xff")).seq
        for story in ("junk-b", "junk-a", "junk-b")
    ]
    for name in ("timeline", "context"):
        await build(p, name)
    letters = doc(await cli(p, "dlq", "list", "--json"))
    assert len(letters) >= 4
    seqs = [d["original_seq"] for d in letters]
    assert seqs == sorted(seqs) and set(seqs) <= set(junk)
    only = doc(await cli(p, "dlq", "list", "-m", "context", "--aggregate", "junk-a", "--json"))
    assert [d["original_seq"] for d in only] == [junk[1]]
    shown = doc(await cli(p, "dlq", "show", str(only[0]["dlq_seq"]), "--json"))
    assert shown["original_seq"] == junk[1] and shown["data_hex"] == "ff"
    error(await cli(p, "dlq", "show", "999999", "--json"), 1)
    retried = await cli(p, "dlq", "retry", "--seq", str(only[0]["dlq_seq"]), "--json")
    assert retried.returncode == 1, retried.stderr
    body = json.loads(retried.stdout)
    assert body["applied"] == [] and list(body["failed"]) == [str(only[0]["dlq_seq"])]
    error(await cli(p, "dlq", "discard", "--seq", str(only[0]["dlq_seq"]), "--json"), 2)
    error(await cli(p, "dlq", "discard", "--json"), 2)
    error(await cli(p, "dlq", "list", "-m", "nope", "--json"), 2)
    # Cutover and drop refusals, as JSON on stderr.
    unbuilt = await cli(p, "cutover", "context", "--to-version", "2", "--json")
    assert "not built" in error(unbuilt, 1)["message"]
    active = await cli(p, "drop", "context", "--version", "1", "--json")
    assert "active" in error(active, 1)["message"]
    never = await cli(p, "drop", "context", "--version", "77", "--json")
    assert "never built" in error(never, 1)["message"]
    assert 77 not in (await p.control.ensure("context", 1)).versions  # no marker left
