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
from jetsource.projection.control import LIVE, ModelControl


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
