"""Admin runs whose decision was made on a look at the control entry that another run
changed before the write (or the answer). Each window is made certain here by
monkeypatching: the other run's write lands between the look and the act.

- a cutover met by any other run's write (a build's heartbeat) failed with the
  control entry's "changed meanwhile; try again"; met by a drop of its target it
  must not make a dropped version active;
- `cutover --drop-old` run again while the first run's drop ends, and a drop whose
  plan saw the version while another drop ended before its claim: 0 removed, not
  "dropped already";
- a rebuild (or reset) meeting another command's claim names that command;
- a replay, a dead-letter retry or discard meeting a drop of its version stops (it
  wrote into the namespace the drop deleted, and left a story there with the version
  gone);
- two dead-letter retries at once count a letter once (both reported it done)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.core.clock import now_ns
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import BUILDING, DROPPED, LIVE, ModelControl
from tests.admin_fixtures import marked, set_version_state
from tests.projector_fixtures import build_context_v1, context_projection, seed, story_ids

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique) as p:
        yield p


async def two_versions(p: Projection) -> None:
    """Context v1 built and active, v2 rebuilt beside it (live)."""
    await seed(p.store, story_ids(4), 5)
    await build_context_v1(p)
    await admin.rebuild(p, "context", 2)


def fresh_claim(op: str) -> dict[str, Any]:
    """Another run's fresh claim (this process's pid: judged by its heartbeat)."""
    return {
        "owner": "other",
        "op": op,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "heartbeat_ns": now_ns(),
    }


def between_look_and_write(
    p: Projection, monkeypatch: pytest.MonkeyPatch, meanwhile: Any
) -> list[int]:
    """``meanwhile()`` runs once, inside the cutover's last look before its write (its
    count of the target's dead letters)."""
    real_count = p.dead_letters.count
    ran: list[int] = []

    async def count(spec: Any) -> int:
        n = await real_count(spec)
        if not ran:
            ran.append(1)
            await meanwhile()
        return n

    monkeypatch.setattr(p.dead_letters, "count", count)
    return ran


async def test_a_cutover_met_by_another_runs_write_still_cuts_over(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any write to the entry between the cutover's look and its write (here a build of
    v3 renewing its claim, every 2 s while it runs) failed the cutover with
    ControlError "changed meanwhile; try again"."""
    p = projection
    await two_versions(p)

    async def heartbeat() -> None:
        def beat(c: ModelControl) -> None:
            c.versions[3] = BUILDING
            c.claims[3] = fresh_claim("rebuild")

        await admin._save(p, "context", beat)

    ran = between_look_and_write(p, monkeypatch, heartbeat)
    result = await admin.cutover(p, "context", 2)
    assert ran
    assert result["active"] == 2 and result["previous"] == 1, result
    control = await p.control.get("context")
    assert control is not None and control.active == 2 and 3 in control.claims


async def test_a_cutover_to_a_version_a_drop_marked_meanwhile_is_refused(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drop of the target between the cutover's look (v2 live) and its write: refused
    naming the state (it was ControlError "changed meanwhile"), and never made active
    (a retry on the look's answer would have made a dropped version the one queries
    read)."""
    p = projection
    await two_versions(p)
    dropping: list[asyncio.Task[int]] = []

    async def drop_marks_it() -> None:
        dropping.append(asyncio.create_task(admin.drop(p, "context", 2, settle_s=0.3)))
        await marked(p, 2, DROPPED)

    between_look_and_write(p, monkeypatch, drop_marks_it)
    with pytest.raises(admin.AdminError, match=r"context v2 is dropped now") as refused:
        await admin.cutover(p, "context", 2)
    assert type(refused.value) is admin.AdminError
    assert await dropping[0] > 0
    control = await p.control.get("context")
    assert control is not None and control.active == 1 and 2 not in control.versions


async def test_cutover_drop_old_run_again_while_the_first_finishes_the_drop_returns_0(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cutover --drop-old` run again (the old version left dropped by a run that
    stopped) while another such run finishes that drop: the second looked (v1 dropped,
    left to finish), the first removed v1, and the second's drop said "v1 was never
    built (or is dropped already)" (an error) instead of 0 removed."""
    p = projection
    await two_versions(p)
    await admin.cutover(p, "context", 2)

    await set_version_state(p, 1, DROPPED)  # left so by a drop that stopped

    real_control = admin._control
    looked: list[int] = []

    async def control_then(pp: Projection, name: str) -> ModelControl:
        seen = await real_control(pp, name)
        if asyncio.current_task() is second and not looked:
            looked.append(1)
            await first  # the first run's drop ends after this look
        return seen

    monkeypatch.setattr(admin, "_control", control_then)
    first = asyncio.create_task(admin.cutover(p, "context", 2, drop_old=True))
    second = asyncio.create_task(admin.cutover(p, "context", 2, drop_old=True))
    one, two = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert looked
    assert one["dropped"] > 0 and two["dropped"] == 0, (one, two)
    assert two["active"] == 2
    control = await real_control(p, "context")
    assert 1 not in control.versions and 1 not in control.claims


async def test_a_drop_whose_plan_saw_the_version_before_another_drop_ended_returns_0(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two drops at once, the second's first look (its plan's) before the first ended,
    its claim after: it said "dropped already: nothing to drop" (the fix of 142bde9
    covered only a second drop that had met the first's claim)."""
    p = projection
    await two_versions(p)
    real_plan = admin.drop_plan

    async def plan_then(pp: Projection, name: str, version: int) -> str:
        state = await real_plan(pp, name, version)
        if asyncio.current_task() is second:
            await first  # the first drop ends after this look, before the claim
        return state

    monkeypatch.setattr(admin, "drop_plan", plan_then)
    first = asyncio.create_task(admin.drop(p, "context", 2, settle_s=0.2, verify_s=0.1))
    second = asyncio.create_task(admin.drop(p, "context", 2, settle_s=0.2, verify_s=0.1))
    removed = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert removed[0] > 0 and removed[1] == 0, removed
    control = await p.control.get("context")
    assert control is not None and 2 not in control.versions and 2 not in control.claims


async def test_a_rebuild_or_reset_meeting_another_command_names_it(
    projection: Projection,
) -> None:
    """A rebuild of a version a drop holds was refused as "being built by another run
    (drop ...): wait for it" (and `wait` says it will never be live); a reset of the
    active version a rebuild holds (resuming a stopped reset's build) as "being reset"."""
    p = projection
    await two_versions(p)

    def dropping(c: ModelControl) -> None:
        c.versions[2] = DROPPED
        c.claims[2] = fresh_claim("drop")

    await admin._save(p, "context", dropping)
    with pytest.raises(admin.Busy) as busy:
        await admin.rebuild(p, "context", 2)
    assert "is being dropped by another run (drop on" in str(busy.value), busy.value
    assert "wait for it" not in str(busy.value)

    def building(c: ModelControl) -> None:
        c.versions[1] = BUILDING
        c.claims[1] = fresh_claim("rebuild")

    await admin._save(p, "context", building)
    with pytest.raises(admin.Busy) as busy:
        await admin.reset(p, "context")
    assert "context v1 is being built by another run (rebuild on" in str(busy.value), busy.value

    def resetting(c: ModelControl) -> None:
        c.versions[1] = BUILDING  # the active version, as a reset builds it again
        c.claims[1] = fresh_claim("reset")

    # A rebuild of a version a reset holds said "running this again ... finishes it":
    # the rebuild run again does not; the reset does.
    await admin._save(p, "context", resetting)
    with pytest.raises(admin.Busy) as busy:
        await admin.rebuild(p, "context", 1)
    message = str(busy.value)
    assert "context v1 is being reset by another run (reset on" in message, message
    assert "if that run is gone, `jetsource projector reset context --yes` " in message, message
    assert "running this again" not in message, message

    def dropping_active(c: ModelControl) -> None:
        c.versions[1] = LIVE
        c.claims[1] = fresh_claim("drop")

    # A reset meeting a drop's claim said "running this again ... finishes it": a reset
    # run again finishes no drop; the drop does.
    await admin._save(p, "context", dropping_active)
    with pytest.raises(admin.Busy) as busy:
        await admin.reset(p, "context")
    message = str(busy.value)
    assert "context v1 is being dropped by another run (drop on" in message, message
    assert "`jetsource projector drop context --version 1` " in message, message
    assert "running this again" not in message, message


async def test_a_replay_meeting_a_drop_of_its_version_stops_and_leaves_nothing(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay checked its version's state once, at its start: a drop that ran while
    it worked was followed by the replay's next story written into the namespace the
    drop had emptied, the version gone from the entry (half dropped: keys with no
    version to drop them by). Now each story's write asks first: the replay stops."""
    p = projection
    await two_versions(p)
    real_replay = admin._replay_aggregate
    dropped: list[int] = []

    async def replay_after_drop(*args: Any, **kwargs: Any) -> tuple[int, int]:
        if not dropped:  # the whole drop runs between the replay's look and its write
            dropped.append(await admin.drop(p, "context", 2, settle_s=0.2, verify_s=0.1))
        return await real_replay(*args, **kwargs)

    monkeypatch.setattr(admin, "_replay_aggregate", replay_after_drop)
    with pytest.raises(admin.AdminError, match=r"context v2 is dropped now"):
        await admin.replay(p, "context", from_seq=1, version=2)
    assert dropped and dropped[0] > 0
    control = await p.control.get("context")
    assert control is not None and 2 not in control.versions
    assert await admin._count(p.model("context", 2)) == 0
    assert control.last_replay is not None and control.last_replay["state"] == "stopped"


async def test_a_replay_reads_its_versions_state_at_most_every_quarter_second(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's fence read the control entry before every story's write: one round
    trip per story (303 reads for 300 stories, 30-85% more wall time on localhost).
    It keeps its answer FENCE_EVERY_S now, as a worker's DropFence does; the first
    write still reads (the test above)."""
    p = projection
    await seed(p.store, story_ids(200), 2)
    await build_context_v1(p)
    real_get = p.control.get
    reads = [0]

    async def get(name: str) -> Any:
        reads[0] += 1
        return await real_get(name)

    monkeypatch.setattr(p.control, "get", get)
    started = time.monotonic()
    report = await admin.replay(p, "context", from_seq=1)
    elapsed = time.monotonic() - started
    assert report.aggregates == 200
    # 3 reads outside the fence, then one a quarter second at most (and the first).
    assert reads[0] <= 3 + 2 + int(elapsed / admin.FENCE_EVERY_S), (reads[0], elapsed)


async def a_letter_to_retry(p: Projection) -> None:
    """The first event of a new story, appended after v2 was built, filed as v2's dead
    letter: a retry applies it to v2 (no worker runs v2 here), and so would one after
    a drop emptied v2 (the story's first event has its place in an empty namespace)."""
    history = story_events("late", 1, 0)
    appended = await p.store.append("late", [NewEvent(history[0])], 0)
    store = p.store
    raw = await jsapi.direct_get(
        store._replies, store.settings.stream, {"seq": appended.stream_seqs[0]}, 5
    )
    assert raw is not None
    await p.dead_letters.publish(p.spec("context", 2), "late", raw, "test", 1)


async def test_a_dead_letter_retry_meeting_a_drop_of_its_version_writes_nothing(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dlq retry` listed v2's letter, then a drop of v2 ran before the letter was
    applied: the story was written into the namespace the drop had emptied (keys left,
    the version gone from the entry). Now the letter's version is asked first."""
    p = projection
    await two_versions(p)
    await a_letter_to_retry(p)
    real_event = admin._letter_event
    dropped: list[int] = []

    async def event_after_drop(*args: Any, **kwargs: Any) -> Any:
        if not dropped:  # the whole drop runs between the listing and the write
            dropped.append(await admin.drop(p, "context", 2, settle_s=0.2, verify_s=0.1))
        return await real_event(*args, **kwargs)

    monkeypatch.setattr(admin, "_letter_event", event_after_drop)
    report = await admin.dlq_retry(p, "context", version=2)
    assert dropped and dropped[0] > 0
    assert await admin._count(p.model("context", 2)) == 0
    assert report.done == [], report
    assert [why for why in report.failed.values()] == [
        "context v2 is dropped now (another run): not written"
    ], report
    assert await admin._count(p.model("context", 2)) == 0


async def test_two_dead_letter_retries_at_once_count_the_letter_once(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `dlq retry` runs listed the same letter; the second applied it after the
    first had (finding it applied) and both reported it done."""
    p = projection
    await two_versions(p)
    await a_letter_to_retry(p)
    real_retry = admin._retry_one

    async def retry_after_first(pp: Projection, letter: Any) -> str | None:
        if asyncio.current_task() is second:
            await first  # the first run applies and removes it meanwhile
        return await real_retry(pp, letter)

    monkeypatch.setattr(admin, "_retry_one", retry_after_first)
    first = asyncio.create_task(admin.dlq_retry(p, "context", version=2))
    second = asyncio.create_task(admin.dlq_retry(p, "context", version=2))
    one, two = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert len(one.done) == 1 and one.failed == {}, one
    assert two.done == [] and two.failed == {}, two
    assert await p.dead_letters.list() == []


async def test_a_dead_letter_discard_meeting_a_drop_of_its_version_writes_nothing(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dlq discard` of v2's letter with a drop of v2 run before its step over: the step
    was written into the namespace the drop had emptied (the story's key left there)."""
    p = projection
    await two_versions(p)
    await a_letter_to_retry(p)
    real_place = admin._its_place
    dropped: list[int] = []

    async def place_after_drop(*args: Any, **kwargs: Any) -> Any:
        if not dropped:  # the whole drop runs between the listing and the write
            dropped.append(await admin.drop(p, "context", 2, settle_s=0.2, verify_s=0.1))
        return await real_place(*args, **kwargs)

    monkeypatch.setattr(admin, "_its_place", place_after_drop)
    report = await admin.dlq_discard(p, "context")
    assert dropped and dropped[0] > 0
    assert await admin._count(p.model("context", 2)) == 0
    assert report.done == [], report
    assert list(report.failed.values()) == [
        "context v2 is dropped now (another run): not written"
    ], report
    assert await admin._count(p.model("context", 2)) == 0


async def test_a_wait_that_meets_a_drop_after_its_look_is_not_answered_live(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wait` looked (v2 live), a drop marked v2, then wait read v2's consumer (still
    there, nothing pending: the drop deletes it after its settle time) and answered
    "live and caught up" for a version being dropped. Now it is looked at again."""
    p = projection
    await two_versions(p)
    real_unacknowledged = admin.unacknowledged
    dropping: list[asyncio.Task[int]] = []
    lags: list[int | None] = []

    async def unacknowledged_after_mark(pp: Projection, name: str, version: int) -> int | None:
        if not dropping:
            # A settle time the consumer surely outlives on a loaded machine (with 1 s the
            # consumer could be gone by the read below, and the test pass without the
            # window it is about).
            dropping.append(asyncio.create_task(admin.drop(p, "context", 2, settle_s=5.0)))
            await marked(p, 2, DROPPED)
        lag = await real_unacknowledged(pp, name, version)
        lags.append(lag)
        return lag

    monkeypatch.setattr(admin, "unacknowledged", unacknowledged_after_mark)
    with pytest.raises(admin.AdminError, match="being dropped; it will never be live"):
        await admin.wait(p, "context", 2, timeout_s=10)
    assert lags[:1] == [0], lags  # the window: the consumer read, still there, caught up
    assert dropping and await dropping[0] > 0


async def test_a_drop_whose_letters_another_run_removes_meanwhile_finishes(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drop lists the version's dead letters and deletes them; one removed between
    (a dlq retry of it, the other of a reset and a drop) failed the drop half-way with
    JsApiError 10057 "no message found", the version left marked dropped."""
    p = projection
    await two_versions(p)
    await a_letter_to_retry(p)
    real_list = p.dead_letters.list
    removed: list[bool] = []

    async def list_then_another_removes(*args: Any, **kwargs: Any) -> Any:
        letters = await real_list(*args, **kwargs)
        if letters and not removed:
            removed.append(await p.dead_letters.delete(letters[0].dlq_seq))
        return letters

    monkeypatch.setattr(p.dead_letters, "list", list_then_another_removes)
    assert await admin.drop(p, "context", 2, settle_s=0.1, verify_s=0.1) > 0
    assert removed == [True]
    control = await p.control.get("context")
    assert control is not None and 2 not in control.versions and 2 not in control.claims


async def test_a_reset_whose_version_is_cut_over_from_and_dropped_meanwhile_says_so(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reset` marked v1 (active) resetting; before its truncation an operator cut over to
    v2 and dropped v1 (the drop takes a reset's claim). The reset said "changed state
    while it was truncated"; it says the version was dropped and what is active."""
    p = projection
    await two_versions(p)
    real_truncate = admin._truncate
    meanwhile: list[int] = []

    async def truncate_after(pp: Projection, name: str, version: int, verify_s: float) -> int:
        if not meanwhile:
            meanwhile.append(0)
            await admin.cutover(p, "context", 2)
            meanwhile.append(await admin.drop(p, "context", 1, settle_s=0.1, verify_s=0.1))
        return await real_truncate(pp, name, version, verify_s)

    monkeypatch.setattr(admin, "_truncate", truncate_after)
    with pytest.raises(
        admin.AdminError,
        match=r"context v1 was dropped by another run while it was reset \(the active "
        r"version is v2 now\)",
    ):
        await admin.reset(p, "context", settle_s=0.1, verify_s=0.1)
    assert meanwhile[1] > 0
    control = await p.control.get("context")
    assert control is not None and control.active == 2 and 1 not in control.versions


async def test_a_cutover_whose_old_version_another_cutover_replaced_is_refused(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cutover 2 --drop-old` looked (v1 active); another cutover made v3 active before
    its write. Cut over from v3 it would drop v3, a version its operator never saw
    active: refused naming both, nothing changed (it failed "changed meanwhile")."""
    p = projection
    await two_versions(p)
    await admin.rebuild(p, "context", 3)

    async def another_cutover() -> None:
        await admin.cutover(p, "context", 3)

    between_look_and_write(p, monkeypatch, another_cutover)
    with pytest.raises(
        admin.AdminError, match=r"active version changed meanwhile \(v1 when looked at, v3 now"
    ):
        await admin.cutover(p, "context", 2, drop_old=True)
    control = await p.control.get("context")
    assert control is not None and control.active == 3
    assert control.versions == {1: "live", 2: "live", 3: "live"}, control.versions
