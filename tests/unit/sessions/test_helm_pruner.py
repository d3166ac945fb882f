"""The sessions pruner's Helm CronJob (rendered offline by Helm's own engine): off by
default, and when on it runs a real `jetsource sessions prune` with the chart's values."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from jetsource.cli.sessions import app, parse_duration
from tests.deploy.chart import by_kind, manifests, render


def test_no_pruner_unless_enabled() -> None:
    assert by_kind(manifests(render()), "CronJob") == {}


def test_the_cronjob_runs_the_prune_command_with_the_values() -> None:
    values = {"sessionsPruner": {"enabled": True, "schedule": "0 * * * *", "olderThan": "7d",
                                 "keep": 50}}  # fmt: skip
    cron = by_kind(manifests(render(values)), "CronJob")["js-jetsource-sessions-pruner"]
    assert cron["spec"]["schedule"] == "0 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["jetsource"]
    args = container["args"]
    assert args == [
        *("sessions", "prune", "--older-than", "7d", "--keep", "50"),
        *("--unended-after", "1d"),  # the default: a session with no ending, a day quiet
    ]
    # the arguments are ones the command accepts
    assert parse_duration(args[3]) == 7 * 86_400
    assert parse_duration(args[7]) == 86_400
    assert CliRunner().invoke(app, [*args[1:], "--help"]).exit_code == 0


def test_a_bad_age_is_refused_by_the_schema() -> None:
    with pytest.raises(Exception, match=r"olderThan|pattern"):
        render({"sessionsPruner": {"enabled": True, "olderThan": "a month"}})


def test_the_unended_age_is_passed_and_a_bad_one_refused_by_the_schema() -> None:
    """unendedAfter: --unended-after (it was not settable: the chart's comment said
    interrupted sessions are never pruned)."""
    values = {"sessionsPruner": {"enabled": True, "unendedAfter": "12h"}}
    cron = by_kind(manifests(render(values)), "CronJob")["js-jetsource-sessions-pruner"]
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--unended-after") + 1] == "12h"
    assert CliRunner().invoke(app, [*args[1:], "--help"]).exit_code == 0
    for bad in ("0", "0.0s", "soon", ""):
        with pytest.raises(Exception, match=r"unendedAfter|pattern"):
            render({"sessionsPruner": {"enabled": True, "unendedAfter": bad}})
