"""A durable R3 consumer whose leader was on one of the two servers that went away, its
stream's leader left behind: `projector status` asked only the streams for their
leader, and the stream's (a leader that still answers, its replicas called current for
10 s) named nothing. The consumer is asked too and named (the unit test
tests/unit/test_projector_consumer_leadership.py covers the command's output)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest

from jetsource.cli import projector
from jetsource.eventstore import jsapi
from tests.chaos.harness import Cluster, start_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = start_cluster(tmp_path, 3)
    yield c
    c.stop()


async def _leader(nc: Any, subject: str) -> str:
    msg = await nc.request(f"$JS.API.{subject}", b"", timeout=5)
    return str(json.loads(msg.data)["cluster"]["leader"])


async def test_a_consumer_whose_leader_went_away_is_named(cluster: Cluster) -> None:
    stream, durable = f"R3_{uuid.uuid4().hex[:8]}", "model_v1"
    nc = await nats.connect(servers=cluster.url.split(","))
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"], num_replicas=3)
        await js.add_consumer(stream, durable_name=durable)
        # The consumer's leader on another server than the stream's.
        for _ in range(20):
            if await _leader(nc, f"CONSUMER.INFO.{stream}.{durable}") != await _leader(
                nc, f"STREAM.INFO.{stream}"
            ):
                break
            await nc.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{durable}", b"", 5)
            await asyncio.sleep(0.5)
        else:
            # A skip here would hide the case this test is for: say it failed.
            pytest.fail("the consumer's leader stayed with the stream's after 20 step-downs")
        left = cluster.leader_of(stream)
    finally:
        await nc.close()
    for i in range(3):
        if i != left:
            cluster.kill(i)

    nc = await nats.connect(cluster.nodes[left].address())
    replies = jsapi.Replies(nc)
    await replies.start()
    try:

        async def start() -> None:
            return None

        p = SimpleNamespace(
            store=SimpleNamespace(
                _replies=replies, settings=SimpleNamespace(request_timeout_s=2.0), start=start
            ),
            spec=lambda model, version: SimpleNamespace(durable=durable),
        )
        rows = [{"stream": stream, "model": "model", "version": 1}]
        named = await projector._leaderless_consumers(p, rows, {})  # type: ignore[arg-type]
    finally:
        await replies.stop()
        await nc.close()
    assert list(named) == [f"consumer {stream}/{durable}"], named
    print(f"\n{named}")
