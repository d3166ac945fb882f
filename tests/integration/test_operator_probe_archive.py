"""`archive restore` as an operator meets it: stopped midway and run again, beside the
stream it came from, and its report.

- Stopped midway (Ctrl-C, NATS lost), the restore left a half-written stream, said
  "every segment sealed so far is whole (run it again to go on)", and running it again
  was refused ("exists and holds messages"). It now goes on where it stopped, and Ctrl-C
  says so.
- Without ``--subject-prefix`` beside its source it answered the raw
  ``JetStream error 400/10065: subjects overlap``; it names ``--subject-prefix`` (field
  in JSON), as `streams restore` does.
- ``from_archive`` counted the messages the live stream also held (201 + 41,000 for a
  41,000-message stream); it counts those only the archive held.
- It showed no progress (35 s silent for 41,000 messages); it shows it on stderr.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest

from jetsource.archive.archiver import Archiver
from jetsource.archive.history import open_archive
from jetsource.archive.restore import RESTORE_MARK, RestoreError, restore
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection, open_projection
from tests.cli_env import cli_env
from tests.integration.archive.fixtures import compacting_settings
from tests.projector_fixtures import seed, story_ids

pytestmark = pytest.mark.integration


class Stop(Exception):
    """Stands for Ctrl-C (or NATS lost) in the middle of a restore."""


async def dump(p: Projection, stream: str) -> list[tuple[int, str, bytes]]:
    out: list[tuple[int, str, bytes]] = []
    seq = 1
    while True:
        page = await jsapi.direct_get_page(p.store._replies, stream, None, seq, 500, 5.0)
        out += [(m.seq, m.subject, bytes(m.data)) for m in page.messages]
        if page.pending == 0 or not page.messages:
            return out
        seq = page.messages[-1].seq + 1


async def info(p: Projection, stream: str) -> dict[str, Any]:
    return await jsapi.api(p.store._replies, f"STREAM.INFO.{stream}", {}, 5.0)


@pytest.fixture
async def exported(settings: JetsourceSettings, unique: str, tmp_path: Path) -> Any:
    """6,000 events, the first 1,000 sealed into the archive (still live too)."""
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    await seed(p.store, story_ids(60, "a"), 100, batch=50)
    archive = open_archive(p.settings, p.store.settings.stream)
    await Archiver(p.store, None, archive, None, 500).export(1, 1000)
    try:
        yield p, archive
    finally:
        await p.close()


async def test_a_restore_stopped_midway_goes_on_when_run_again(exported: Any, unique: str) -> None:
    p, archive = exported
    source = p.store.settings.stream
    root = p.store.settings.subject_prefix.split(".")[0]
    config = (await info(p, source))["config"]
    target = f"RG_{unique}"

    def stop_at_2000(done: int, total: int) -> None:
        if done >= 2000 and done < total:
            raise Stop

    with pytest.raises(Stop):
        await restore(
            p.store._replies, archive, config, target, {root: f"rg{unique}"}, 5.0, stop_at_2000
        )
    left = await info(p, target)
    assert 0 < left["state"]["messages"] < 6000
    mark = left["config"]["metadata"][RESTORE_MARK]
    assert mark.startswith(f"{source} running "), mark  # then the options it was run with

    report = await restore(p.store._replies, archive, config, target, {root: f"rg{unique}"}, 5.0)
    assert (report.first_seq, report.last_seq, report.gaps) == (1, 6000, 0)
    # Each message counted once: the 1,000 archived ones are live too.
    assert (report.from_archive, report.from_live) == (0, 6000)
    before = await dump(p, source)
    after = await dump(p, target)
    assert [(s, subj.replace(root, f"rg{unique}", 1), d) for s, subj, d in before] == after
    done = await info(p, target)
    assert RESTORE_MARK not in (done["config"].get("metadata") or {})
    assert done["config"]["deny_delete"] is True
    # A finished one is not written again: restored already, nothing changed
    # (tests/integration/archive/test_restore_again.py).
    again = await restore(p.store._replies, archive, config, target, {root: f"rg{unique}"}, 5.0)
    assert again.already_restored and (again.first_seq, again.last_seq) == (1, 6000)
    assert await dump(p, target) == after


async def test_a_restore_beside_its_source_names_subject_prefix(exported: Any, unique: str) -> None:
    p, archive = exported
    config = (await info(p, p.store.settings.stream))["config"]
    with pytest.raises(RestoreError) as refused:
        await restore(p.store._replies, archive, config, f"RO_{unique}", {}, 5.0)
    assert refused.value.field == "--subject-prefix"
    assert "overlap" in str(refused.value) and "--subject-prefix" in str(refused.value)
    with pytest.raises(jsapi.JsApiError):  # nothing was created
        await info(p, f"RO_{unique}")


def _archive_env(p: Any, unique: str, tmp_path: Path, progress_every_s: str) -> dict[str, str]:
    """The CLI's environment for the exported stream and its archive under tmp_path."""
    return cli_env(
        p.settings.nats_url(),
        unique,
        JETSOURCE_EVENTSTORE__STREAM=p.store.settings.stream,
        JETSOURCE_EVENTSTORE__SUBJECT_PREFIX=p.store.settings.subject_prefix,
        JETSOURCE_ARCHIVE__URL=str(tmp_path / "archive"),
        JETSOURCE_PROGRESS_EVERY_S=progress_every_s,
    )


async def test_ctrl_c_on_archive_restore_says_to_run_it_again_and_that_finishes_it(
    exported: Any, unique: str, tmp_path: Path
) -> None:
    p, _ = exported
    root = p.store.settings.subject_prefix.split(".")[0]
    for attempt in range(3):  # a restore that beat the Ctrl-C is tried again, never skipped
        target = f"RC{attempt}_{unique}"
        env = _archive_env(p, unique, tmp_path, "0.2")
        argv = [sys.executable, "-m", "jetsource", "archive", "restore", target]
        argv += ["--subject-prefix", f"{root}=rc{attempt}{unique}", "--json"]
        child = await asyncio.create_subprocess_exec(*argv, env=env, stdout=PIPE, stderr=PIPE)
        for _ in range(600):  # until it has written part of the new stream (a progress line)
            try:
                if (await info(p, target))["state"]["messages"] > 2100:
                    break
            except jsapi.JsApiError:
                pass
            await asyncio.sleep(0.02)
        child.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(child.communicate(), 60)
        lines = [json.loads(line) for line in err.decode().splitlines()]
        if child.returncode != 0:
            break
    else:
        pytest.fail("three restores of 6,000 events each finished before Ctrl-C reached them")
    assert child.returncode == 130, err
    assert out == b""
    assert any("progress" in line for line in lines), err
    error = lines[-1]["error"]
    assert error["code"] == "cancelled"
    assert target in error["message"] and "again" in error["message"]
    assert "sealed" not in error["message"]

    again = await asyncio.create_subprocess_exec(*argv, env=env, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(again.communicate(), 120)
    assert again.returncode == 0, err
    report = json.loads(out)
    assert (report["last_seq"], report["from_archive"] + report["from_live"]) == (6000, 6000)
    assert len(await dump(p, target)) == 6000


def test_export_shows_progress_and_says_a_range_past_the_end_holds_nothing(
    exported: Any, unique: str, tmp_path: Path
) -> None:
    """`archive export` was silent however long it ran, and a range past the stream's
    end answered "0 messages sealed in 0 segments" without saying why."""
    from tests.cli_env import jetsource

    p, _ = exported
    env = _archive_env(p, unique, tmp_path, "0.01")
    done = jetsource(env, "archive", "export", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    assert sum(e["count"] for e in json.loads(done.stdout)) == 5000  # 1..1000 sealed before
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    seen = [line["progress"] for line in lines if "progress" in line]
    assert seen, done.stderr
    assert [s["done"] for s in seen] == sorted(s["done"] for s in seen)
    assert (seen[-1]["done"], seen[-1]["total"]) == (6000, 6000)

    past = jetsource(env, "archive", "export", "--from-seq", "7000", "--json", timeout=60)
    assert past.returncode == 0, past.stderr
    assert json.loads(past.stdout) == []
    warnings = [
        json.loads(line)["warning"] for line in past.stderr.splitlines() if "warning" in line
    ]
    assert any("past the stream's last sequence (6000)" in w for w in warnings), past.stderr


@pytest.mark.parametrize("command", [("list",), ("verify",), ("export", "--to-seq", "10")])
@pytest.mark.parametrize("under", [False, True])
def test_an_archive_location_that_is_not_a_folder_is_named(
    exported: Any, unique: str, tmp_path: Path, command: tuple[str, ...], under: bool
) -> None:
    """`list` and `verify` said "0 segments verified" (exit 0) for an archive URL that is
    a file; `export` said `[Errno 20] Not a directory: ...`, without the setting."""
    from tests.cli_env import jetsource

    p, _ = exported
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    location = blocker / "archive" if under else blocker
    env = cli_env(
        p.settings.nats_url(),
        unique,
        JETSOURCE_EVENTSTORE__STREAM=p.store.settings.stream,
        JETSOURCE_EVENTSTORE__SUBJECT_PREFIX=p.store.settings.subject_prefix,
        JETSOURCE_ARCHIVE__URL=str(location),
    )
    done = jetsource(env, "archive", *command, "--json", timeout=60)
    if under and command[0] != "export":  # nothing there yet, and nothing written
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1, done.stdout + done.stderr
    error = json.loads(done.stderr.splitlines()[-1])["error"]
    assert "JETSOURCE_ARCHIVE__URL" in error["message"], error
    assert str(blocker) in error["message"]
    assert "Errno" not in error["message"]
