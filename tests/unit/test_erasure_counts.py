"""The erase's report of a model in its plan with no version to write (each one dropped
or being reset when it looked): no aggregate written again, as the dry run reports it.
It counted every aggregate as written (each had been written in all of no versions)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from jetsource.projection import admin, erasure


async def test_a_model_with_no_version_to_write_counts_no_aggregate_written() -> None:
    report = erasure.ErasureReport(aggregates={"context": ["s1", "s2"]})
    report.models["timeline"] = {"aggregates": 0, "versions": {}, "failed": {}}
    plan: erasure.Plan = [("context", "timeline", ["s1", "s2"], [])]
    p = cast(Any, None)  # no version: the model is never opened
    await erasure._write_again(p, report, plan, erasure._Tally(lambda done, total: None))
    assert report.models["timeline"] == {"aggregates": 0, "versions": {}, "failed": {}}
    assert report.failed == []


async def test_a_second_pass_with_no_version_keeps_what_the_first_pass_wrote(
    monkeypatch: Any,
) -> None:
    """Pass 1 writes s1 and s2 in timeline v1; v1 is dropped before pass 2, whose plan
    has no version of it: the report said {"aggregates": 0, "versions": {"1": 2}} (pass
    2's "none written" over what pass 1 wrote). Both stay written."""

    async def replay(p: Any, name: str, **kw: Any) -> Any:
        return SimpleNamespace(failed={})

    monkeypatch.setattr(admin, "replay", replay)
    p = cast(Any, SimpleNamespace(model=lambda name, version: object()))
    report = erasure.ErasureReport(aggregates={"context": ["s1", "s2"]})
    report.models["timeline"] = {"aggregates": 0, "versions": {}, "failed": {}}
    tally = erasure._Tally(lambda done, total: None)
    await erasure._write_again(p, report, [("context", "timeline", ["s1", "s2"], [1])], tally)
    assert report.models["timeline"]["aggregates"] == 2
    await erasure._write_again(p, report, [("context", "timeline", ["s1", "s2"], [])], tally)
    assert report.models["timeline"] == {"aggregates": 2, "versions": {"1": 2}, "failed": {}}
