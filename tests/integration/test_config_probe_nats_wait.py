"""A service started before NATS waits for it and says so: each warning names the
server (credentials masked) and that it is retried. It said
``nats: [Errno 111] Connection refused`` (no server, no word of waiting), and for
an error without text only ``nats: ``."""

from __future__ import annotations

import asyncio
import logging

import pytest

from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.devstack.servers import free_port
from jetsource.eventstore.bootstrap import connect


def test_waiting_for_nats_names_the_server_and_says_it_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    settings = JetsourceSettings(
        nats=NatsSettings(url=f"nats://ann:s3cret@127.0.0.1:{port}", connect_timeout_s=0.2)
    )

    async def attempt() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connect(settings), 1.5)

    with caplog.at_level(logging.WARNING, logger="jetsource.nats"):
        asyncio.run(attempt())
    said = [r.getMessage() for r in caplog.records if r.name == "jetsource.nats"]
    assert said, "nothing said while waiting"
    for message in said:
        assert f"at nats://***@127.0.0.1:{port}; retrying" in message, message
        assert "s3cret" not in message
        assert not message.startswith("nats: at")  # an error without text is named
