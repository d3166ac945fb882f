"""`archive restore` into one stream a second time, after the first finished or beside
it: the second was refused "exists and holds messages", or, run at once, failed with
"sequence 1 of ... was written as 1 in ... (a duplicate message id)", though nothing was
doubled. It now says the stream was restored already and changes nothing (exit 0, as a
`streams restore` or `archive export` run again); one that meets the other still
writing stops, saying so (exit 1), and neither writes a message twice."""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest

from jetsource.archive.archiver import Archiver
from jetsource.archive.history import open_archive
from jetsource.archive.restore import RestoreError, RestoreReport, restore
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection, open_projection
from tests.cli_env import cli_env
from tests.integration.archive.fixtures import compacting_settings
from tests.projector_fixtures import seed, story_ids

pytestmark = pytest.mark.integration


@pytest.fixture
async def exported(settings: JetsourceSettings, unique: str, tmp_path: Path) -> Any:
    """300 events, the first 100 sealed into the archive (still live too)."""
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    await seed(p.store, story_ids(6, "a"), 50, batch=50)
    archive = open_archive(p.settings, p.store.settings.stream)
    await Archiver(p.store, None, archive, None, 100).export(1, 100)
    try:
        yield p, archive
    finally:
        await p.close()


async def dump(p: Projection, stream: str) -> list[tuple[int, bytes]]:
    page = await jsapi.direct_get_page(p.store._replies, stream, None, 1, 1000, 5.0)
    assert page.pending == 0
    return [(m.seq, bytes(m.data)) for m in page.messages]


async def test_a_restore_run_again_or_at_once_says_restored_already(
    exported: Any, unique: str
) -> None:
    p, archive = exported
    source = p.store.settings.stream
    root = p.store.settings.subject_prefix.split(".")[0]
    config = (await jsapi.api(p.store._replies, f"STREAM.INFO.{source}", {}, 5.0))["config"]
    target = f"RA_{unique}"
    args = (p.store._replies, archive, config, target, {root: f"ra{unique}"}, 5.0)

    # Two at once: one writes it all; the other meets it and says so (or, if it came
    # after the end, that it was restored already). Nothing doubled either way.
    both = await asyncio.gather(restore(*args), restore(*args), return_exceptions=True)
    written = [
        r
        for r in both
        if isinstance(r, RestoreReport) and not getattr(r, "already_restored", False)
    ]
    assert len(written) == 1, both
    (other,) = [r for r in both if r is not written[0]]
    if isinstance(other, BaseException):
        assert type(other).__name__ == "RestoreBusy", other
        assert "being restored" in str(other) and "duplicate" not in str(other)
    else:
        assert isinstance(other, RestoreReport) and other.already_restored, other
    expected = await dump(p, source)
    assert await dump(p, target) == expected

    # Run after it: restored already, nothing changed.
    again = await restore(*args)
    assert again.already_restored and (again.first_seq, again.last_seq) == (1, 300), again
    assert await dump(p, target) == expected

    # Another source's restore into it is still refused.
    other_archive = open_archive(p.settings, f"OTHER_{unique}")
    with pytest.raises(RestoreError, match="holds messages"):
        await restore(p.store._replies, other_archive, config, target, {}, 5.0)


def _restore_cli(p: Any, unique: str, tmp_path: Path, tag: str) -> tuple[dict[str, str], list[str]]:
    """The environment and the command line of `archive restore` into a stream of its
    own (``tag``: its name's and its subjects' prefix)."""
    root = p.store.settings.subject_prefix.split(".")[0]
    env = cli_env(
        p.settings.nats_url(),
        unique,
        JETSOURCE_EVENTSTORE__STREAM=p.store.settings.stream,
        JETSOURCE_EVENTSTORE__SUBJECT_PREFIX=p.store.settings.subject_prefix,
        JETSOURCE_ARCHIVE__URL=str(tmp_path / "archive"),
    )
    target = f"{tag.upper()}_{unique}"
    argv = [sys.executable, "-m", "jetsource", "archive", "restore", target]
    return env, [*argv, "--subject-prefix", f"{root}={tag}{unique}"]


async def test_the_cli_run_again_exits_0_saying_nothing_changed(
    exported: Any, unique: str, tmp_path: Path
) -> None:
    p, _ = exported
    env, argv = _restore_cli(p, unique, tmp_path, "rb")
    argv += ["--json"]
    first = await asyncio.create_subprocess_exec(*argv, env=env, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(first.communicate(), 60)
    assert first.returncode == 0, err
    assert json.loads(out).get("already_restored", False) is False

    again = await asyncio.create_subprocess_exec(*argv, env=env, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(again.communicate(), 60)
    assert again.returncode == 0, err
    report = json.loads(out)
    assert report["already_restored"] is True and report["last_seq"] == 300, report
    warnings = [json.loads(line)["warning"] for line in err.decode().splitlines() if "warn" in line]
    assert any("restored" in w and "already" in w and "nothing changed" in w for w in warnings)


@pytest.mark.parametrize("retention", ["age+compaction", "age"])
async def test_the_cli_run_again_without_max_age_is_what_the_restore_says(
    exported: Any, unique: str, tmp_path: Path, retention: str
) -> None:
    """`archive restore T --retention R --max-age-s 3600`, then the same without
    --max-age-s: refused as a usage error before connecting (exit 2), where the restore
    said "restored already, nothing changed" (age+compaction records no max age, exit 0)
    or named --max-age-s and what the stream was restored with (age, exit 1)."""
    p, _ = exported
    env, argv = _restore_cli(p, unique, tmp_path, "rm")
    argv += ["--retention", retention, "--json"]
    first = await asyncio.create_subprocess_exec(
        *argv, "--max-age-s", "3600", env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(first.communicate(), 60)
    assert first.returncode == 0, err

    again = await asyncio.create_subprocess_exec(*argv, env=env, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(again.communicate(), 60)
    if retention == "age+compaction":
        assert again.returncode == 0, err
        assert json.loads(out)["already_restored"] is True, out
        return
    assert again.returncode == 1, err
    error = json.loads(err.decode().strip().splitlines()[-1])["error"]
    assert error["field"] == "--max-age-s", error
    assert "--max-age-s 3600" in error["message"], error


class _Stop(Exception):
    pass


async def test_a_foreign_message_in_a_stopped_restore_is_refused_not_resumed_over(
    exported: Any, unique: str
) -> None:
    """A restore stopped midway, then something other than a restore wrote onto the new
    stream's subjects: run again, the restore went on after the stream's last sequence,
    the foreign message keeping the place of the source's sequence, exit 0 (a message
    lost). It is now refused naming the sequence and what holds it; nothing more is
    written."""
    p, archive = exported
    source = p.store.settings.stream
    root = p.store.settings.subject_prefix.split(".")[0]
    config = (await jsapi.api(p.store._replies, f"STREAM.INFO.{source}", {}, 5.0))["config"]
    target = f"RF_{unique}"
    prefixes = {root: f"rf{unique}"}

    def stop(done: int, total: int) -> None:
        raise _Stop  # before its first message: the stream made, marked running

    with pytest.raises(_Stop):
        await restore(p.store._replies, archive, config, target, prefixes, 5.0, progress=stop)
    subject = f"rf{unique}" + p.store.settings.subject_prefix[len(root) :] + ".foreign.x"
    ack = await jsapi.publish(
        p.store._replies, jsapi.OutMessage(subject, b"not the source's", {}), 5.0
    )
    assert (ack.stream, ack.seq) == (target, 1)

    with pytest.raises(RestoreError, match="at sequence 1, not sequence 1 of") as refused:
        await restore(p.store._replies, archive, config, target, prefixes, 5.0)
    assert f"a message on {subject}" in str(refused.value)
    assert "--subject-prefix" in str(refused.value)
    assert await dump(p, target) == [(1, b"not the source's")]


async def test_a_restore_run_again_with_other_options_is_refused_naming_them(
    exported: Any, unique: str
) -> None:
    """The restored mark held no options: the same restore run again with another
    --subject-prefix (or another --retention) said "restored already, nothing changed",
    exit 0, of a stream that holds other subjects. It now holds them, and a run with
    others is refused naming the option, what the stream was restored with and what this
    run gives; nothing is written. The same options still say restored already, and a
    stopped restore goes on only with the options it was started with."""
    p, archive = exported
    source = p.store.settings.stream
    root = p.store.settings.subject_prefix.split(".")[0]
    config = (await jsapi.api(p.store._replies, f"STREAM.INFO.{source}", {}, 5.0))["config"]
    target = f"RO_{unique}"
    replies = p.store._replies
    prefixes = {root: f"ro{unique}"}
    await restore(replies, archive, config, target, prefixes, 5.0)
    expected = await dump(p, target)

    with pytest.raises(RestoreError) as refused:
        await restore(replies, archive, config, target, {root: f"other{unique}"}, 5.0)
    said = str(refused.value)
    assert refused.value.field == "--subject-prefix", said
    assert f"--subject-prefix {root}=ro{unique}" in said, said
    assert f"--subject-prefix {root}=other{unique}" in said, said
    with pytest.raises(RestoreError) as refused:
        await restore(
            replies, archive, config, target, prefixes, 5.0, retention="age", max_age_s=60.0
        )
    assert refused.value.field == "--retention", refused.value
    assert "no --retention" in str(refused.value) and "--retention age" in str(refused.value)
    again = await restore(replies, archive, config, target, prefixes, 5.0)
    assert again.already_restored, again
    assert await dump(p, target) == expected

    # Stopped midway, then run with another prefix: refused, not written after it.
    stopped = f"RS_{unique}"

    def stop(done: int, total: int) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        await restore(replies, archive, config, stopped, {root: f"rs{unique}"}, 5.0, progress=stop)
    with pytest.raises(RestoreError, match="partly restored") as refused:
        await restore(replies, archive, config, stopped, {root: f"rt{unique}"}, 5.0)
    assert refused.value.field == "--subject-prefix", refused.value
    assert await dump(p, stopped) == []
    done = await restore(replies, archive, config, stopped, {root: f"rs{unique}"}, 5.0)
    assert not done.already_restored and done.last_seq == 300, done
