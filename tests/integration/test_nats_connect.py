"""bootstrap.connect: a caller's timeout stops the connect attempt for good (nats-py
would otherwise retry an absent server forever in the background)."""

from __future__ import annotations

import asyncio

import pytest

from jetsource.core.settings import JetsourceSettings, NatsSettings, redact_url
from jetsource.devstack.servers import free_port
from jetsource.eventstore.bootstrap import connect


def test_a_timeout_abandons_the_connect_attempt() -> None:
    settings = JetsourceSettings(
        nats=NatsSettings(url=f"nats://127.0.0.1:{free_port()}", connect_timeout_s=0.2)
    )

    async def attempt() -> list[asyncio.Task[object]]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connect(settings), 1.0)
        await asyncio.sleep(0.5)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    # Its own event loop: nothing but this attempt could have left a task behind.
    assert asyncio.run(attempt()) == []


def test_urls_are_redacted() -> None:
    assert redact_url("nats://u:secret@a:4222,tls://b:4222") == "nats://***@a:4222,tls://b:4222"
    # A password holding "/" (or "@") was shown from the "/" on: everything to the last @.
    assert redact_url("nats://u:se/cr@et@a:4222") == "nats://***@a:4222"
    assert redact_url("redis://:p/w@v:6379/0") == "redis://***@v:6379/0"
    assert redact_url("u:secret@a:4222") == "***@a:4222"
    assert redact_url("redis://:pa,ss@v:6379/0") == "redis://***@v:6379/0"  # a "," too
    assert redact_url("nats://u:p@a:1, tls://v:w@b:2") == "nats://***@a:1, tls://***@b:2"
