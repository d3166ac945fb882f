"""`projector replay` said "... 1 stories" of a one-story slice, as its dry run did:
one is singular now ("1 story"); the JSON keeps its numbers."""

from __future__ import annotations

import asyncio
import json

from jetsource.core.settings import JetsourceSettings
from tests.cli_env import jetsource
from tests.projector_fixtures import append_story, eventually, running_projector, timeline_reached
from tests.stack import environment


async def test_a_one_story_replay_says_1_story(settings: JetsourceSettings, unique: str) -> None:
    async with running_projector(settings, unique) as (base, p):
        last = await append_story(p, "a")
        await eventually(lambda: timeline_reached(p, last.stream_seqs[-1]))
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
