"""`projector replay` said "... 1 stories" of a one-story slice, as its dry run did:
one is singular now ("1 story"); the JSON keeps its numbers."""

from __future__ import annotations

import asyncio
import contextlib
import json

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService
from tests.cli_env import jetsource
from tests.projector_fixtures import projector_settings
from tests.stack import environment


async def test_a_one_story_replay_says_1_story(settings: JetsourceSettings, unique: str) -> None:
    base = projector_settings(settings, unique)
    service = ProjectorService(await open_projection(base))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    p = await open_projection(base, provision=False)
    try:
        last = await p.store.append(
            "s1",
            [
                NewEvent(ev.ContextCreated(title="T", created_by="a")),
                NewEvent(ev.DecisionAdded(decision_id="d1", author="a", title="D")),
            ],
            0,
        )
        for _ in range(200):
            if (await p.model("timeline", 1).checkpoint()).seq >= last.stream_seqs[-1]:
                break
            await asyncio.sleep(0.05)
        env = environment(base)
        args = ("-o", "plain", "projector", "replay", "timeline", "--aggregate", "s1")
        dry = await asyncio.to_thread(jetsource, env, *args, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would replay 2 events of 1 story (" in dry.stdout, dry.stdout
        done = await asyncio.to_thread(jetsource, env, *args)
        assert done.returncode == 0, done.stderr
        assert ": 2 events in the slice" in done.stdout, done.stdout
        assert " 1 story, " in done.stdout and "stories" not in done.stdout, done.stdout
        report = await asyncio.to_thread(jetsource, env, *args[2:], "--json")
        assert (json.loads(report.stdout)["aggregates"], json.loads(report.stdout)["events"]) == (
            1,
            2,
        )
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        for name in ("context", "timeline", "graph"):
            with contextlib.suppress(Exception):
                await service.projection.model(name, 1).drop()
        await service.projection.close()
        await p.close()
