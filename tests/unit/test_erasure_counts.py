"""The erase's report of a model in its plan with no version to write (each one dropped
or being reset when it looked): no aggregate written again, as the dry run reports it.
It counted every aggregate as written (each had been written in all of no versions)."""

from __future__ import annotations

from typing import Any, cast

from jetsource.projection import erasure


async def test_a_model_with_no_version_to_write_counts_no_aggregate_written() -> None:
    report = erasure.ErasureReport(aggregates={"context": ["s1", "s2"]})
    report.models["timeline"] = {"aggregates": 0, "versions": {}, "failed": {}}
    plan: erasure.Plan = [("context", "timeline", ["s1", "s2"], [])]
    p = cast(Any, None)  # no version: the model is never opened
    await erasure._write_again(p, report, plan, erasure._Tally(lambda done, total: None))
    assert report.models["timeline"] == {"aggregates": 0, "versions": {}, "failed": {}}
    assert report.failed == []
