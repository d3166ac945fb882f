"""`erase SUBJECT --dry-run` counts the models as the erase then does. The erase said
"N aggregates written again in M models" with M every model of every registered domain
(the untouched domains' and the never built too), the dry run "would be written again
in K models" with K those its plan writes: 1 aggregate "in 9 models" after a plan of 4.
Both count the models with a version in the plan now (and a model with no version to
write counts no aggregate written in either JSON report: tests/unit/test_erasure_counts.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService
from tests.integration.test_erasure import erase_cli, valkey_dump
from tests.projector_fixtures import projector_settings
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
    base = projector_settings(settings, unique)
    service = ProjectorService(await open_projection(base))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    p = await open_projection(base, provision=False)
    try:
        await p.store.append(
            "s1",
            [
                NewEvent(ev.ContextCreated(title="T", created_by=alice), metadata={"actor": alice}),
                NewEvent(ev.DecisionAdded(decision_id="d1", author=alice, title="D")),
            ],
            0,
        )
        for _ in range(200):
            with contextlib.suppress(AssertionError):
                dump = await valkey_dump(settings, f"t{unique}:timeline")
                if alice in dump:
                    break
            await asyncio.sleep(0.05)
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
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        for name in ("context", "timeline", "graph"):
            with contextlib.suppress(Exception):
                await service.projection.model(name, 1).drop()
        await service.projection.close()
        await p.close()
