"""`erase SUBJECT --dry-run` counts the models as the erase then does. The erase said
"N aggregates written again in M models" with M every model of every registered domain
(the untouched domains' and the never built too), the dry run "would be written again
in K models" with K those its plan writes: 1 aggregate "in 9 models" after a plan of 4.
Both count the models with a version in the plan now (and a model with no version to
write counts no aggregate written in either JSON report: tests/unit/test_erasure_counts.py)."""

from __future__ import annotations

import json
import re

import pytest

from jetsource.core.settings import JetsourceSettings
from tests.integration.test_erasure import erase_cli, valkey_dump
from tests.projector_fixtures import append_story, eventually, running_projector
from tests.stack import environment

pytestmark = pytest.mark.integration


def models_said(stdout: str) -> int:
    """The M of "... written again in M models" (the erase's first line)."""
    said = re.search(r"written again in (\d+) models?\b", stdout)
    assert said, stdout
    return int(said.group(1))


async def test_erase_dry_run_counts_the_models_the_erase_then_counts(
    settings: JetsourceSettings, unique: str
) -> None:
    alice = f"alice-{unique}"
    async with running_projector(settings, unique) as (base, p):
        await append_story(p, alice, actor=True)

        async def timeline_names_alice() -> bool:
            return alice in await valkey_dump(settings, f"t{unique}:timeline")

        await eventually(timeline_names_alice)
        env = environment(base)
        dry = erase_cli(env, alice, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        planned = [m for m, e in plan["models"].items() if e["versions"]]
        # Models the plan leaves alone are in the report: what is counted matters.
        assert planned and len(planned) < len(plan["models"]), plan["models"]
        text = erase_cli(env, alice, "--dry-run")
        assert text.returncode == 0, text.stderr
        assert models_said(text.stdout) == len(planned), text.stdout

        done = erase_cli(env, alice, "--yes")
        assert done.returncode == 0, done.stderr
        assert models_said(done.stdout) == len(planned), (done.stdout, planned)
