"""A model version the erase's first pass failed to write (a store error, not a drop)
and another run dropped before the second pass: the second pass's plan no longer has
it, and its first-pass failure was reported all the same (exit 1, "run the same erase
again", which plans without it). Nothing of a dropped version is left to erase: it is
said under ``skipped``. One still live keeps its failure."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from jetsource.projection import admin, erasure
from jetsource.projection.control import BUILDING, DROPPED, LIVE, RESETTING, ModelControl


def _projection(versions: dict[int, str]) -> Any:
    async def get(name: str) -> ModelControl:
        return ModelControl(1, dict(versions))

    return SimpleNamespace(model=lambda name, version: object(), control=SimpleNamespace(get=get))


@pytest.mark.parametrize("dropped", [True, False])
async def test_a_first_pass_failure_in_a_version_dropped_before_the_second_is_skipped(
    monkeypatch: Any, dropped: bool
) -> None:
    async def replay(p: Any, name: str, aggregate_id: str, version: int) -> Any:
        if version == 2 and aggregate_id == "s1":
            raise RuntimeError("store away")
        return SimpleNamespace(failed={})

    monkeypatch.setattr(admin, "replay", replay)
    report = erasure.ErasureReport(aggregates={"context": ["s1", "s2"]})
    report.models["context"] = {"aggregates": 0, "versions": {}, "failed": {}}
    tally = erasure._Tally(lambda done, total: None)
    p = _projection({1: LIVE, 2: LIVE})
    await erasure._write_again(p, report, [("context", "context", ["s1", "s2"], [1, 2])], tally)
    assert list(report.models["context"]["failed"]) == ["s1 v2"]
    p = cast(Any, _projection({1: LIVE} if dropped else {1: LIVE, 2: LIVE}))
    second = [1] if dropped else [1, 2]
    monkeypatch.setattr(admin, "replay", replay)
    await erasure._write_again(p, report, [("context", "context", ["s1", "s2"], second)], tally)
    entry = report.models["context"]
    if dropped:
        assert report.failed == [] and entry["failed"] == {}, report
        assert report.skipped == [
            "context v2: dropped by another run meanwhile (nothing of it left to erase)"
        ]
        assert entry["emptied_meanwhile"] == {"2": "dropped"}
        assert entry["versions"] == {"1": 2} and entry["aggregates"] == 2, entry
    else:
        assert report.failed == ["context s1 v2: RuntimeError('store away')"], report
        assert report.skipped == [] and "emptied_meanwhile" not in entry


@pytest.mark.parametrize("failed", [False, True])
def test_the_erase_command_says_a_skipped_version_and_exits_0_when_nothing_failed(
    monkeypatch: Any, failed: bool
) -> None:
    """The command's line and exit code for a report with a version dropped meanwhile:
    "skipped: ..." and exit 0; with a failure too, exit 1 as before."""
    from typer.testing import CliRunner

    from jetsource.cli import erase as erase_cli
    from jetsource.cli import output as out
    from jetsource.cli.app import app

    report = erasure.ErasureReport(subject_ref="ab", key_destroyed=True, scanned=4)
    report.aggregates = {"context": ["s1", "s2"]}
    report.models["context"] = {
        "aggregates": 2,
        "versions": {"1": 2},
        "failed": {},
        "emptied_meanwhile": {"2": "dropped"},
    }
    report.skipped = ["context v2: dropped by another run meanwhile (nothing of it left to erase)"]
    if failed:
        report.failed = ["timeline s1 v1: RuntimeError('store away')"]
    monkeypatch.setattr(erase_cli, "_run", lambda work, need=None, stopped="": report)
    result = CliRunner().invoke(app, ["erase", "ana", "--yes"], catch_exceptions=False)
    out.set_mode(None)
    assert (
        "  skipped: context v2: dropped by another run meanwhile (nothing of it left to erase)"
        in result.stdout
    ), result.stdout
    assert result.exit_code == (1 if failed else 0), (result.stdout, result.stderr)


def _counting(states: list[dict[int, str]]) -> Any:
    """A projection whose control entry reads ``states`` in turn (the last one
    again once they are used up), counting the reads."""
    reads: list[int] = []

    async def get(name: str) -> ModelControl:
        reads.append(1)
        return ModelControl(1, dict(states[min(len(reads), len(states)) - 1]))

    return SimpleNamespace(
        model=lambda name, version: object(), control=SimpleNamespace(get=get), reads=reads
    )


def _fresh(ids: list[str]) -> erasure.ErasureReport:
    report = erasure.ErasureReport(aggregates={"context": ids})
    report.models["context"] = {"aggregates": 0, "versions": {}, "failed": {}}
    return report


async def test_a_version_emptied_in_the_first_pass_and_built_again_is_written_not_skipped(
    monkeypatch: Any,
) -> None:
    """Dropped during the first pass (its writes fail on the drop), built again by
    another run before the second, which writes it: the report said it both skipped
    (``skipped``, ``emptied_meanwhile``) and written (``versions``)."""
    dropped = True

    async def replay(p: Any, name: str, aggregate_id: str, version: int) -> Any:
        if version == 2 and dropped:
            raise RuntimeError("context v2 is dropped now")
        return SimpleNamespace(failed={})

    monkeypatch.setattr(admin, "replay", replay)
    report = _fresh(["s1", "s2"])
    tally = erasure._Tally(lambda done, total: None)
    plan = [("context", "context", ["s1", "s2"], [1, 2])]
    await erasure._write_again(_projection({1: LIVE}), report, plan, tally)
    assert report.models["context"]["emptied_meanwhile"] == {"2": "dropped"}
    assert len(report.skipped) == 1, report.skipped
    dropped = False  # built again (v2 building) before the second pass
    await erasure._write_again(_projection({1: LIVE, 2: BUILDING}), report, plan, tally)
    entry = report.models["context"]
    assert report.skipped == [] and "emptied_meanwhile" not in entry, report
    assert report.failed == [] and entry["versions"] == {"1": 2, "2": 2}, entry
    assert entry["aggregates"] == 2, entry


async def test_a_version_failing_every_story_reads_its_control_entry_twice_not_per_story(
    monkeypatch: Any,
) -> None:
    """A store away fails every story of a live version: the control entry was read
    once per failed story (is it dropped meanwhile?); now once on the first failure and
    once after the version's stories. Each story's failure is still reported."""

    async def replay(p: Any, name: str, aggregate_id: str, version: int) -> Any:
        raise RuntimeError("store away")

    monkeypatch.setattr(admin, "replay", replay)
    ids = [f"s{i}" for i in range(6)]
    report = _fresh(ids)
    p = _counting([{1: LIVE}])
    tally = erasure._Tally(lambda done, total: None)
    await erasure._write_again(p, report, [("context", "context", ids, [1])], tally)
    assert len(p.reads) == 2, p.reads
    assert len(report.failed) == 6 and report.skipped == [], report


async def test_a_version_dropped_after_its_first_failure_is_still_skipped(
    monkeypatch: Any,
) -> None:
    """The entry read once on the first failure (live then: a store error) and the
    version dropped after that read, its other writes failing on the drop: the read
    after the version's stories says it is skipped, not failed."""

    async def replay(p: Any, name: str, aggregate_id: str, version: int) -> Any:
        raise RuntimeError("store away")

    monkeypatch.setattr(admin, "replay", replay)
    report = _fresh(["s1", "s2", "s3"])
    p = _counting([{1: LIVE, 2: LIVE}, {1: LIVE, 2: DROPPED}])
    tally = erasure._Tally(lambda done, total: None)
    await erasure._write_again(p, report, [("context", "context", ["s1", "s2", "s3"], [2])], tally)
    entry = report.models["context"]
    assert report.failed == [] and entry["failed"] == {}, report
    assert entry["emptied_meanwhile"] == {"2": "dropped"}, entry


async def test_a_version_being_reset_is_skipped_with_how_to_finish_the_reset(
    monkeypatch: Any,
) -> None:
    """A version another run is resetting is skipped (exit 0), but until that reset
    ends the namespace keeps the values it has not rebuilt, erased ones among them:
    the line names the command that finishes a reset that stopped."""

    async def replay(p: Any, name: str, aggregate_id: str, version: int) -> Any:
        raise RuntimeError("context v1 is resetting now")

    monkeypatch.setattr(admin, "replay", replay)
    report = _fresh(["s1"])
    tally = erasure._Tally(lambda done, total: None)
    plan = [("context", "context", ["s1"], [1])]
    await erasure._write_again(_projection({1: RESETTING}), report, plan, tally)
    assert report.failed == [], report
    assert report.skipped == [
        "context v1: being reset by another run meanwhile (its rebuild reads the events as "
        "erased; if that reset stopped, finish it with `jetsource projector reset context "
        "--yes`)"
    ], report.skipped
