"""`jetsource streams ensure` on a ledger stream made before the pruner's policy (with
deny_purge, which nats-server never lifts in place): the stream is moved to the new
configuration under its name, with every message at its sequence and its durable
consumers where they were; pruning works on it afterwards, and ensuring again changes
nothing. A move killed after its holding stream was made is finished by the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from jetsource.core.settings import NatsSettings
from jetsource.domains.process.descriptor import DOMAIN
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import stream_config
from jetsource.eventstore.reshape import lift_deny_purge
from tests.infra import Server, _embedded

from .test_prune import ended

pytestmark = pytest.mark.integration


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Server]:
    from jetsource.devstack.servers import NatsServer, free_port

    server = _embedded(
        NatsServer(
            tmp_path / "nats", port=free_port(), monitor_port=free_port(), sync_interval=None
        )
    )
    yield server
    server.stop()


def ensure(url: str) -> dict[str, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    run = subprocess.run(
        [sys.executable, "-m", "jetsource", "streams", "ensure", "--json"],
        env=env | {"JETSOURCE_NATS__URL": url},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return {row["role"]: row for row in json.loads(run.stdout.splitlines()[-1])}


async def old_ledger(url: str) -> tuple[SessionsAppSettings, list[str], list[tuple[Any, ...]]]:
    """PROCESS_EVENTS as it was made before (deny_purge), three ended sessions on it, a
    durable consumer that acknowledged the first four messages; the stored messages."""
    settings = SessionsAppSettings(nats=NatsSettings(url=url))
    nc = await nats.connect(url)
    replies = jsapi.Replies(nc)
    await replies.start()
    old = {**stream_config(DOMAIN.eventstore(settings)), "deny_purge": True}
    await jsapi.api(replies, "STREAM.CREATE.PROCESS_EVENTS", old, 5.0)
    async with open_sessions(settings) as c:
        ids = await ended(c, 3)
    js = nc.jetstream()
    sub = await js.pull_subscribe("process.events.>", durable="reader", stream="PROCESS_EVENTS")
    for msg in await sub.fetch(4, timeout=5):
        await msg.ack_sync()
    stored = await messages(replies)
    await replies.stop()
    await nc.close()
    return settings, ids, stored


async def messages(replies: jsapi.Replies) -> list[tuple[Any, ...]]:
    info = await jsapi.api(replies, "STREAM.INFO.PROCESS_EVENTS", {}, 5.0)
    out = []
    for seq in range(1, int(info["state"]["last_seq"]) + 1):
        raw = await jsapi.direct_get(replies, "PROCESS_EVENTS", {"seq": seq}, 5.0)
        if raw is not None:
            out.append((raw.seq, raw.subject, raw.time_ns, raw.data))
    return out


async def state(url: str) -> tuple[dict[str, Any], list[tuple[Any, ...]], int]:
    nc = await nats.connect(url)
    replies = jsapi.Replies(nc)
    await replies.start()
    try:
        info = await jsapi.api(replies, "STREAM.INFO.PROCESS_EVENTS", {}, 5.0)
        consumer = await jsapi.api(replies, "CONSUMER.INFO.PROCESS_EVENTS.reader", {}, 5.0)
        return info["config"], await messages(replies), int(consumer["ack_floor"]["stream_seq"])
    finally:
        await replies.stop()
        await nc.close()


async def test_streams_ensure_moves_the_ledger_to_the_pruners_policy(private: Server) -> None:
    settings, ids, before = await old_ledger(private.url)
    rows = ensure(private.url)
    assert rows["process events"]["action"] == "updated"
    config, after, _ = await state(private.url)
    assert config["deny_purge"] is False and config["deny_delete"] is True
    assert config["subjects"] == ["process.events.>", "process.voids.>"]
    assert after == before  # every message at its sequence, with its stored time
    nc = await nats.connect(private.url)
    sub = await nc.jetstream().pull_subscribe(
        "process.events.>", durable="reader", stream="PROCESS_EVENTS"
    )
    first = (await sub.fetch(1, timeout=5))[0]  # the consumer goes on where it was
    assert first.metadata.sequence.stream == 5
    await nc.close()
    async with open_sessions(settings) as c:
        report = await c.sessions.prune(c.purger, older_than_s=0, keep=1)
        assert [r.session_id for r in report.pruned] == ids[:2]
    assert ensure(private.url)["process events"]["action"] == "unchanged"


async def test_a_move_killed_midway_is_finished_by_the_next_ensure(private: Server) -> None:
    _, _, before = await old_ledger(private.url)
    nc = await nats.connect(private.url)
    replies = jsapi.Replies(nc)
    await replies.start()
    wanted = stream_config(DOMAIN.eventstore(SessionsAppSettings()))

    class Killed(Exception):
        pass

    said: list[str] = []

    def say(message: str) -> None:
        said.append(message)
        if len(said) == 2:  # the original is deleted, the holding stream has it all
            raise Killed(message)

    with pytest.raises(Killed):
        await lift_deny_purge(replies, wanted, 5.0, say)
    with pytest.raises(jsapi.JsApiError):
        await jsapi.api(replies, "STREAM.INFO.PROCESS_EVENTS", {}, 5.0)
    await replies.stop()
    await nc.close()
    assert ensure(private.url)["process events"]["stream"] == "PROCESS_EVENTS"
    config, after, _ = await state(private.url)
    assert config["deny_purge"] is False and after == before
