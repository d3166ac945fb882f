"""The write-health probe (publisher, observer) names an event stream that refuses new
messages at its limits: ``max_msgs`` with discard new was not looked at, so health came
back SERVING within a second while every append was refused "maximum messages
exceeded"; a stream that discards old messages at a limit takes every write and is
not reported."""

from __future__ import annotations

from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from jetsource.core.writehealth import WriteHealth
from tests.infra import Server

pytestmark = pytest.mark.integration


class _Gauge:
    def set(self, value: float) -> None:
        pass


@pytest.mark.parametrize(
    ("limit", "discard", "problem"),
    [
        ({"max_msgs": 2}, DiscardPolicy.NEW, "is at its max_msgs (2) (discard new)"),
        ({"max_msgs": 2}, DiscardPolicy.OLD, ""),
        ({"max_bytes": 200}, DiscardPolicy.OLD, ""),
    ],
)
async def test_a_stream_at_a_limit_it_refuses_at_is_named(
    nats_server: Server, unique: str, limit: dict[str, Any], discard: DiscardPolicy, problem: str
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"WH_{unique}"
    try:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"wh{unique}.>"], discard=discard, **limit)
        )
        health = WriteHealth(nc, stream, "test", _Gauge(), who="test")
        assert await health.probe() == ""
        for _ in range(3):
            try:
                await js.publish(f"wh{unique}.a", b"x" * 90, stream=stream)
            except nats.js.errors.APIError:
                break  # refused: full
        said = await health.probe()
        assert said == (f"stream {stream} {problem}" if problem else ""), said
        if problem:  # the way back: the limit raised
            info = await js.stream_info(stream)
            info.config.max_msgs = info.config.max_bytes = -1
            await js.update_stream(info.config)
            assert await health.probe() == ""
    finally:
        await js.delete_stream(stream)
        await nc.close()
