"""A subject the client's NATS user may not use: nats-py reports the server's
"Permissions Violation" to the error callback, which logged it as a warning ending
"retrying" (nothing retries it; the request behind it waits out its timeout and reads
as a server that does not answer). It is an error naming the settings of the user."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.eventstore.bootstrap import connect, release

PASSWORD = "limited-pw-2b7"


@pytest.fixture
def limited_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(
        tmp_path / "nats",
        port=free_port(),
        monitor_port=free_port(),
        extra_config=(
            'authorization { users: [ {user: "limited", password: "' + PASSWORD + '", '
            'permissions: {publish: {allow: ["_INBOX.>"]}, '
            'subscribe: {allow: ["_INBOX.>"]}}} ] }'
        ),
    )
    proc = server.start()
    try:
        server.wait_ready(proc, 30)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def test_a_permissions_violation_is_an_error_naming_the_user_settings(
    limited_nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jetsource.nats")
    settings = JetsourceSettings(
        nats=NatsSettings(
            url=f"nats://127.0.0.1:{limited_nats.port}",
            user="limited",
            password=SecretStr(PASSWORD),
        )
    )
    nc = await connect(settings)
    try:
        await nc.subscribe("forbidden.subject")
        for _ in range(100):
            if any("permissions violation" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    finally:
        await release(nc)
    said = [r for r in caplog.records if "permissions violation" in r.getMessage()]
    assert said, caplog.text
    assert said[0].levelno == logging.ERROR
    message = said[0].getMessage()
    assert "refused this client" in message and "JETSOURCE_NATS__USER" in message
    assert "retrying" not in message and PASSWORD not in message
