"""sessionsPruner.olderThan and unendedAfter: the schema refuses what the CLI refuses.

Their patterns took any count of digits, so 100000w (over 292 years, past int64
nanoseconds) passed the chart, and the CronJob's `jetsource sessions prune` exited 2 on
every run. The digits are capped per unit (9 of seconds, 8 of minutes, 6 of hours, 5 of
days, 4 of weeks: all under 292 years), checked against the CLI's parse_duration and by
Helm's own schema validation at render time."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import typer

from jetsource.cli.sessions import parse_duration
from tests.deploy.chart import CHART, render

LONGEST = ["999999999", "999999999.9s", "99999999m", "999999h", "99999d", "9999w"]
TOO_LONG = ["100000w", "20000w", "300000d", "3000000h", "200000000m", "10000000000"]


@pytest.fixture(scope="module")
def pruner() -> dict[str, Any]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    return schema["properties"]["sessionsPruner"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("field", ["olderThan", "unendedAfter"])
def test_the_longest_durations_the_schema_takes_the_cli_takes(
    field: str, pruner: dict[str, Any]
) -> None:
    for text in [*LONGEST, "30d", "12h", "1.5w", "90m", "45s"]:
        jsonschema.validate({field: text}, pruner)
        assert parse_duration(text) < 292 * 365 * 86_400


@pytest.mark.parametrize("field", ["olderThan", "unendedAfter"])
@pytest.mark.parametrize("text", TOO_LONG)
def test_what_the_cli_refuses_the_schema_refuses(
    field: str, text: str, pruner: dict[str, Any]
) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration(text)
    with pytest.raises(jsonschema.ValidationError) as caught:
        jsonschema.validate({field: text}, pruner)
    assert caught.value.validator == "pattern"


@pytest.mark.parametrize("field", ["olderThan", "unendedAfter"])
def test_helm_refuses_it_at_install_time(field: str) -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"sessionsPruner": {"enabled": True, field: "100000w"}})
    render({"sessionsPruner": {"enabled": True, field: "9999w"}})
