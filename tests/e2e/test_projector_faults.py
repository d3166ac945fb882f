"""Exactly-once effects under faults: a 50k-event load while the projector process is
killed with SIGKILL five times, Valkey and nats-server restart, and a short ack wait
forces redeliveries. The read models must equal a clean rebuild, and every event
must have been applied exactly once (the models count each application)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from jetsource.core.envelope import NewEvent
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.servers import free_port
from jetsource.domains.context.samples import story_events
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.settings import ProjectorSettings
from tests.infra import Server
from tests.projector_fixtures import projector_settings, start_projector, story_ids

# Minutes long and restarts the shared servers: `make chaos`, not `make test`.
pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

STORIES, EVENTS = 500, 100  # 50,000 events
MODELS = ("context", "timeline", "graph")


def environment(s: ProjectorSettings) -> dict[str, str]:
    o = s.projector
    env = {
        "JETSOURCE_NATS__URL": s.nats_url(),
        "JETSOURCE_VALKEY__URL": s.valkey_url(),
        "JETSOURCE_GRAPH__URI": s.graph_uri(),
        "JETSOURCE_GRAPH__USER": s.graph.user,
        "JETSOURCE_GRAPH__PASSWORD": s.graph_auth()[1],
        "JETSOURCE_GRAPH__DATABASE": s.graph.database,
        "JETSOURCE_EVENTSTORE__STREAM": s.eventstore.stream,
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": s.eventstore.subject_prefix,
        "JETSOURCE_PROJECTOR__HTTP_PORT": str(o.http_port),
        "JETSOURCE_PROJECTOR__DLQ_STREAM": o.dlq_stream,
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": o.dlq_subject_prefix,
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": o.control_bucket,
        "JETSOURCE_PROJECTOR__VALKEY_PREFIX": o.valkey_prefix,
        "JETSOURCE_PROJECTOR__GRAPH_LABEL_PREFIX": o.graph_label_prefix,
        "JETSOURCE_PROJECTOR__ACK_WAIT_S": str(o.ack_wait_s),
        "JETSOURCE_PROJECTOR__PULL_BATCH": str(o.pull_batch),
        "JETSOURCE_PROJECTOR__BACKOFF_S": json.dumps(o.backoff_s),
        "JETSOURCE_PROJECTOR__MODELS": json.dumps(list(MODELS)),
        "JETSOURCE_LOG_LEVEL": "WARNING",
    }
    return {**os.environ, **env}


async def load(p: Projection, stories: list[str]) -> None:
    """Append every story's history; an append that fails while NATS restarts is
    retried with the same event ids (so it is stored once)."""

    async def write(story: str) -> None:
        for i, message in enumerate(story_events(story, EVENTS)):
            event = NewEvent(message)
            while True:
                try:
                    await p.store.append(story, [event], i)
                    break
                except (EventStoreUnavailableError, TimeoutError):
                    await asyncio.sleep(0.2)

    sem = asyncio.Semaphore(100)

    async def limited(story: str) -> None:
        async with sem:
            await write(story)

    await asyncio.gather(*(limited(s) for s in stories))


@pytest.mark.timeout(600)
async def test_exactly_once_through_kills_restarts_and_redelivery(
    settings: JetsourceSettings,
    nats_server: Server,
    valkey_server: Server,
    unique: str,
    tmp_path: Path,
) -> None:
    s = projector_settings(
        settings,
        unique,
        http_port=free_port(),
        ack_wait_s=1.0,
        pull_batch=500,
        backoff_s=[0.05, 0.2, 0.5],
    )
    s.eventstore.retry_attempts = 3
    env = environment(s)
    log = tmp_path / "projector.log"
    p = await open_projection(s)
    proc = start_projector(env, log)
    stories = story_ids(STORIES)
    total = STORIES * EVENTS
    try:
        writing = asyncio.create_task(load(p, stories))
        faults = []
        for n in range(5):
            await asyncio.sleep(1.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            faults.append(f"kill -9 #{n + 1}")
            if n == 1:
                await asyncio.to_thread(valkey_server.restart)
                faults.append("valkey restarted")
            if n == 3:
                await asyncio.to_thread(nats_server.restart)
                faults.append("nats restarted")
            proc = start_projector(env, log)
        await writing
        deadline = time.monotonic() + 300
        models = {name: p.model(name, 1) for name in MODELS}
        while time.monotonic() < deadline:
            done = [(await m.checkpoint()).applied for m in models.values()]
            if all(d >= total for d in done):
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

        stream = await p.store.stream_info()
        assert stream["state"]["messages"] == total  # every append stored once
        for name, model in models.items():
            # Applied exactly once each: the count written with the effects equals the
            # number of events, and the content equals a clean build of the stream.
            assert (await model.checkpoint()).applied == total, name
            assert await admin.dlq_list(p, name) == [], name
            await admin.rebuild(p, name, 2)
            clean = p.model(name, 2)
            assert (await clean.checkpoint()).applied == total, name
            if name == "graph":
                from jetsource.domains.context.graph_model import GraphModel

                assert isinstance(model, GraphModel) and isinstance(clean, GraphModel)
                # Rows compared as sets of hashes (linear): the first few that differ
                # on either side, to say what differs when the digests do not match.
                a, b = await model.dump(), await clean.dump()
                ha = {hashlib.sha256(repr(x).encode()).digest(): x for x in a}
                hb = {hashlib.sha256(repr(x).encode()).digest(): x for x in b}
                only_a = sorted(repr(ha[h]) for h in ha.keys() - hb.keys())[:3]
                only_b = sorted(repr(hb[h]) for h in hb.keys() - ha.keys())[:3]
                assert only_a == only_b == [], (only_a, only_b)
            assert await model.digest() == await clean.digest(), name
        print("faults:", ", ".join(faults))
    finally:
        if proc.poll() is None:
            proc.kill()
        for name in MODELS:
            for v in (1, 2):
                await p.model(name, v).drop()
        await p.close()
