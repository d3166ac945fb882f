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


async def test_a_stream_its_user_may_not_create_is_access_denied_not_a_lost_quorum(
    limited_nats: NatsServer,
) -> None:
    """The create got no answer (only the violation report) and, after 15 s of asking
    again, said the cluster had no JetStream meta leader: a service ended exit 1 with a
    traceback telling the operator to start missing servers."""
    from jetsource.core.errors import AccessDeniedError
    from jetsource.core.settings import EventStoreSettings
    from jetsource.domains.context.events import registry
    from jetsource.eventstore.jetstream import JetStreamEventStore

    settings = JetsourceSettings(
        nats=NatsSettings(
            url=f"nats://127.0.0.1:{limited_nats.port}",
            user="limited",
            password=SecretStr(PASSWORD),
        )
    )
    nc = await connect(settings)
    try:
        store = JetStreamEventStore(
            nc, registry, EventStoreSettings(stream="PERM_EVENTS", request_timeout_s=0.3)
        )
        with pytest.raises(AccessDeniedError) as refused:
            await asyncio.wait_for(store.ensure_streams(), 10)
    finally:
        await release(nc)
    message = str(refused.value)
    assert "perm_events" in message.lower() and "permissions violation" in message
    assert "JETSOURCE_NATS__USER" in message and "meta leader" not in message


@pytest.mark.parametrize(
    "group", [("projector", "status"), ("archive", "list"), ("streams", "ensure", "--timeout", "2")]
)
def test_the_cli_says_access_denied_not_that_nats_does_not_answer(
    limited_nats: NatsServer, tmp_path: Path, group: tuple[str, ...]
) -> None:
    """Its requests got no answer (NATS refused them): 'unavailable: NATS did not answer
    within 10 s', exit 3 (retry). Now exit 1 naming the refusal, as a refused login."""
    import json

    from typer.testing import CliRunner

    from jetsource.cli.app import app

    env = {
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{limited_nats.port}",
        "JETSOURCE_NATS__USER": "limited",
        "JETSOURCE_NATS__PASSWORD": PASSWORD,
        "JETSOURCE_SECRETS_DIR": "/nonexistent-secrets",
        "JETSOURCE_ARCHIVE__URL": str(tmp_path / "archive"),
        "JETSOURCE_ADMIN_CONNECT_TIMEOUT_S": "1",
    }
    r = CliRunner().invoke(app, [*group, "--json"], env=env)
    assert r.exit_code == 1, r.output
    error = json.loads(r.output.strip().splitlines()[-1])["error"]
    assert error["code"] == "access denied", error
    assert "permissions violation" in error["message"] and PASSWORD not in error["message"]
