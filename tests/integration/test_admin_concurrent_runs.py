"""Admin runs that meet on one model version, and answers that were slow or false:

- two `rebuild --to-version 2` at once: the second is refused (code busy) while the
  first builds; the first builds it all (both used to run on one consumer, the first
  ending with "dropped while it was being built", the second reporting its share);
- a build whose runner stopped (its claim's heartbeat is stale) shows as ``stopped``
  in status, and the next rebuild takes it over and finishes it;
- two drops at once: the second waits for the first and removes nothing (both
  reported every key);
- `wait` for a version nobody builds is refused at once;
- a replay of a range holding a corrupt story replays the others and lists it under
  ``failed`` (it refused the whole range);
- a usage error in JSON mode names its ``field``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator

import pytest

from jetsource.core.clock import now_ns
from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import BUILDING, ModelControl
from tests.projector_fixtures import build_context_v1, context_projection, seed, story_ids

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique) as p:
        yield p


async def build_v1(p: Projection) -> None:
    await build_context_v1(p)


async def test_one_build_per_version_and_a_stopped_one_is_resumed(
    projection: Projection,
) -> None:
    p = projection
    await seed(p.store, story_ids(8), 25)
    await build_v1(p)

    both = await asyncio.gather(
        admin.rebuild(p, "context", 2), admin.rebuild(p, "context", 2), return_exceptions=True
    )
    built = [r for r in both if isinstance(r, admin.RebuildReport)]
    refused = [r for r in both if isinstance(r, BaseException)]
    assert len(built) == 1 and len(refused) == 1, both
    assert isinstance(refused[0], admin.Busy), refused
    assert "being built by another run" in str(refused[0])
    assert built[0].applied == 200  # all of it, not a share
    control = await p.control.get("context")
    assert control is not None and 2 not in control.claims

    # A build whose runner is gone: shown stopped, then taken over and finished.
    def stale(c: ModelControl) -> None:
        c.versions[3] = BUILDING
        c.progress[3] = {"done": 10, "total": 200, "percent": 5.0, "rate": 1.0, "eta_s": 190}
        c.claims[3] = {"owner": "gone", "op": "rebuild", "heartbeat_ns": now_ns() - 60 * 10**9}

    await admin._save(p, "context", stale)
    rows = {r["version"]: r for r in await admin.status(p) if r["model"] == "context"}
    assert rows[3]["state"] == "stopped", rows[3]
    assert (await admin.rebuild(p, "context", 3)).checkpoint == 200

    # Two drops at once: the keys are counted once.
    removed = await asyncio.gather(
        admin.drop(p, "context", 2, settle_s=0.1, verify_s=0.1),
        admin.drop(p, "context", 2, settle_s=0.1, verify_s=0.1),
    )
    assert sorted(removed)[0] == 0 and sorted(removed)[1] > 0, removed

    # Waiting for a version nobody builds: refused at once, naming it.
    started = time.monotonic()
    with pytest.raises(admin.AdminError, match="v9 does not exist") as refusal:
        await admin.wait(p, "context", 9, timeout_s=10)
    assert not isinstance(refusal.value, admin.WaitTimeout)
    assert time.monotonic() - started < 3


async def test_a_drop_that_sees_another_finish_between_its_look_and_claim_returns_0(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second drop waits while the first holds the version, looks again, then claims.
    When the first ended between that look and the claim, the second said "dropped
    already: nothing to drop" (an error, ci54b) instead of 0 removed. The window is made
    certain here: the second's look is answered from before the first ended."""
    p = projection
    await seed(p.store, story_ids(4), 5)
    await build_v1(p)
    await admin.rebuild(p, "context", 2)

    # settle_s 3: the first holds v2 long enough that the second surely meets its claim
    # (with 0.5 s a loaded 2-core machine could start the second after the first ended).
    first = asyncio.create_task(admin.drop(p, "context", 2, settle_s=3.0, verify_s=0.1))
    for _ in range(200):  # until the first holds the version
        control = await p.control.get("context")
        if control is not None and (control.claims.get(2) or {}).get("op") == "drop":
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the first drop never claimed v2")

    met: list[BaseException] = []
    real_take, real_control = admin.Lease.take, admin._control

    async def take(self: admin.Lease, *args: object, **kwargs: object) -> ModelControl:
        try:
            return await real_take(self, *args, **kwargs)  # type: ignore[arg-type]
        except admin.Busy as busy:
            met.append(busy)
            raise

    async def control_then(pp: Projection, name: str) -> ModelControl:
        seen = await real_control(pp, name)
        if met and asyncio.current_task() is second:
            await first  # the first drop ends after this look, before the claim
        return seen

    monkeypatch.setattr(admin.Lease, "take", take)
    monkeypatch.setattr(admin, "_control", control_then)
    second = asyncio.create_task(admin.drop(p, "context", 2, settle_s=0.1, verify_s=0.1))
    removed = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert met, "the second drop never met the first"
    assert removed[1] == 0 and removed[0] > 0, removed
    control = await real_control(p, "context")
    assert 2 not in control.versions and 2 not in control.claims


async def test_a_corrupt_story_fails_alone_in_a_replayed_range(projection: Projection) -> None:
    p = projection
    await seed(p.store, ["good", "bad"], 4)
    ack = await p.nc.request(f"{p.store.settings.subject_prefix}.bad.DecisionAdded", b"\xff", 5)
    junk = int(json.loads(ack.data)["seq"])
    await seed(p.store, ["late"], 3)
    await build_v1(p)

    report = await admin.replay(p, "context", from_seq=1, to_seq=junk + 3)

    assert list(report.failed) == [junk], report.failed
    assert report.failed[junk].startswith("bad: not replayed")
    assert report.aggregates == 2 and report.reapplied == 7  # good (4) and late (3)


INVERTED = ("--from-seq", "9", "--to-seq", "2", "--json")


def test_a_usage_error_names_its_field_in_json() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    out = subprocess.run(
        [sys.executable, "-m", "jetsource", "projector", "replay", "context", *INVERTED],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    error = json.loads(out.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "--from-seq"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_ctrl_c_says_the_reset_stopped_and_status_shows_it_stopped(
    projection: Projection, stop: signal.Signals
) -> None:
    """Ctrl-C (SIGINT) on `projector reset`: one JSON line saying it stopped and that
    running it again resumes (code cancelled, exit 130), the claim given back, so
    `status` shows the version stopped at once; running it again finishes it. SIGTERM
    (kill, timeout, systemd) the same: it exited 143 in silence, holding the claim; its
    line names SIGTERM (it said "stopped (Ctrl-C)")."""
    from tests.integration.test_admin_contract import cli_env

    p = projection
    await seed(p.store, story_ids(2), 5)
    await build_v1(p)
    env = cli_env(p) | {"JETSOURCE_PROJECTOR__CONTROL_POLL_S": "2"}  # a 3 s settle
    command = [sys.executable, "-m", "jetsource", "projector", "reset", "context", "--yes"]
    child = await asyncio.create_subprocess_exec(
        *command, "--json", env=env, stdout=PIPE, stderr=PIPE
    )
    for _ in range(200):  # until it has claimed the version and fenced it
        control = await p.control.get("context")
        if control is not None and 1 in control.claims:
            break
        await asyncio.sleep(0.05)
    child.send_signal(stop)
    out, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 130, err
    assert out == b""
    error = json.loads(err.decode().strip().splitlines()[-1])["error"]
    assert error["code"] == "cancelled" and "again" in error["message"]
    # It names the signal that came: SIGTERM said "stopped (Ctrl-C)" too.
    said = "Ctrl-C" if stop == signal.SIGINT else "SIGTERM"
    assert f"stopped ({said})" in error["message"], error
    assert "Ctrl-C" not in error["message"] or stop == signal.SIGINT, error
    rows = {r["version"]: r for r in await admin.status(p) if r["model"] == "context"}
    assert rows[1]["state"] == "stopped", rows[1]

    report = await admin.reset(p, "context", settle_s=0.1, verify_s=0.1)
    assert report.checkpoint == 10


async def test_a_killed_reset_on_this_host_is_taken_over_at_once(projection: Projection) -> None:
    """`projector reset` killed (kill -9, OOM) leaves its claim; the next reset was
    refused busy until the claim went stale (15 s), though its holder's pid was dead on
    this very host. It now takes the claim over at once, saying so (a JSON warning on
    stderr). A holder on another host, or a pid alive here, keeps the claim."""
    import socket

    from tests.integration.test_admin_contract import cli_env

    p = projection
    await seed(p.store, story_ids(2), 5)
    await build_v1(p)
    env = cli_env(p)
    command = [sys.executable, "-m", "jetsource", "projector", "reset", "context", "--yes"]
    slow = env | {"JETSOURCE_PROJECTOR__CONTROL_POLL_S": "5"}  # a 6 s settle: killed in it
    child = await asyncio.create_subprocess_exec(
        *command, "--json", env=slow, stdout=PIPE, stderr=PIPE
    )
    for _ in range(200):  # until it has claimed the version
        control = await p.control.get("context")
        if control is not None and 1 in control.claims:
            break
        await asyncio.sleep(0.05)
    child.kill()
    await asyncio.wait_for(child.communicate(), 10)  # reaped: no zombie left
    control = await p.control.get("context")
    assert control is not None and control.claims[1]["pid"] == child.pid
    rows = {r["version"]: r for r in await admin.status(p) if r["model"] == "context"}
    assert rows[1]["state"] == "stopped", rows[1]

    started = time.monotonic()
    again = await asyncio.create_subprocess_exec(
        *command, "--json", env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(again.communicate(), 30)
    assert again.returncode == 0, err
    assert time.monotonic() - started < 10
    assert json.loads(out)["checkpoint"] == 10
    warnings = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert any(
        f"pid {child.pid}" in w.get("warning", "") and "process is gone" in w["warning"]
        for w in warnings
    ), warnings

    # The same claim held elsewhere (another host name; this host name on another
    # machine, whose host PID namespace has the same id as this one's), or by a live
    # process here: still refused busy.
    here = admin._pid_space()
    assert here is not None
    other_boot = "00000000-0000-0000-0000-000000000000 " + here.split(" ", 1)[1]
    sleeper = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        for host, pid, space in (
            (socket.gethostname(), sleeper.pid, here),
            ("elsewhere", child.pid, here),
            (socket.gethostname(), child.pid, other_boot),
        ):

            def held(c: ModelControl, host: str = host, pid: int = pid, space: str = space) -> None:
                c.claims[1] = {
                    "owner": "other",
                    "op": "reset",
                    "host": host,
                    "pid": pid,
                    "pid_space": space,
                    "heartbeat_ns": now_ns(),
                }

            await admin._save(p, "context", held)
            with pytest.raises(admin.Busy, match="being reset by another run"):
                await admin.reset(p, "context", settle_s=0.1, verify_s=0.1)
    finally:
        sleeper.kill()
        await sleeper.wait()


async def test_the_busy_refusal_says_when_a_rerun_takes_the_claim_over(
    projection: Projection,
) -> None:
    """A busy refusal said "running this again after 15 s finishes it" of every holder,
    but the rule differs: a holder whose process can be looked for here (this boot, this
    PID namespace) is taken over at once once gone, one elsewhere (another host, a clone
    of this host name, another container) 15 s after its last heartbeat. It now says the
    rule of the holder it names."""
    import socket

    p = projection
    await seed(p.store, story_ids(2), 5)
    await build_v1(p)
    here = admin._pid_space()
    assert here is not None
    other_boot = "00000000-0000-0000-0000-000000000000 " + here.split(" ", 1)[1]
    sleeper = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        for host, space, rule in (
            (
                socket.gethostname(),
                here,
                f"running this again at once (its process, pid {sleeper.pid}",
            ),
            ("elsewhere", here, "running this again 15 s after its last heartbeat (in "),
            (socket.gethostname(), other_boot, "running this again 15 s after its last"),
        ):

            def held(c: ModelControl, host: str = host, space: str = space) -> None:
                c.claims[1] = {
                    "owner": "other",
                    "op": "reset",
                    "host": host,
                    "pid": sleeper.pid,
                    "pid_space": space,
                    "heartbeat_ns": now_ns() - 3_000_000_000,
                }

            await admin._save(p, "context", held)
            with pytest.raises(admin.Busy) as busy:
                await admin.reset(p, "context", settle_s=0.1, verify_s=0.1)
            said = str(busy.value)
            assert rule in said and "after 15 s" not in said, said
            if host == "elsewhere":
                # 3 s since its heartbeat, then the time the refusal took
                assert re.search(r"\(in 1[0-2] s: its process, on elsewhere, cannot", said), said
    finally:
        sleeper.kill()
        await sleeper.wait()
