"""``jetsource projector status`` for a NATS user that may not ask for STREAM.INFO: the
request got no answer (NATS refused it, reporting a permissions violation) and status
read that as a stream without a leader: exit 3, "the NATS cluster is electing one or
lost quorum ... start the missing servers", on a healthy server. It is access denied
(exit 1, as every admin group says it), naming the subject and the settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jetsource.devstack.servers import NatsServer, free_port

ADMIN_PW = "admin-pw-71c"
LIMITED_PW = "limited-pw-9d4"


@pytest.fixture
def info_denied_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """Two users: ``admin`` may do anything, ``limited`` anything but STREAM.INFO."""
    server = NatsServer(
        tmp_path / "nats",
        port=free_port(),
        monitor_port=free_port(),
        extra_config=(
            'authorization { users: [ {user: "admin", password: "' + ADMIN_PW + '"}, '
            '{user: "limited", password: "' + LIMITED_PW + '", '
            'permissions: {publish: {allow: [">"], deny: ["$JS.API.STREAM.INFO.>"]}, '
            'subscribe: {allow: [">"]}}} ] }'
        ),
    )
    proc = server.start()
    try:
        server.wait_ready(proc, 30)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_status_denied_stream_info_is_access_denied_not_leaderless(
    info_denied_nats: NatsServer, tmp_path: Path
) -> None:
    from jetsource.cli.app import app

    env = {
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{info_denied_nats.port}",
        "JETSOURCE_SECRETS_DIR": "/nonexistent-secrets",
        "JETSOURCE_ARCHIVE__URL": str(tmp_path / "archive"),
        "JETSOURCE_ADMIN_CONNECT_TIMEOUT_S": "2",
        "JETSOURCE_EVENTSTORE__REQUEST_TIMEOUT_S": "1",
    }
    admin = {"JETSOURCE_NATS__USER": "admin", "JETSOURCE_NATS__PASSWORD": ADMIN_PW}
    ensured = CliRunner().invoke(app, ["streams", "ensure"], env=env | admin)
    assert ensured.exit_code == 0, ensured.output

    limited = {"JETSOURCE_NATS__USER": "limited", "JETSOURCE_NATS__PASSWORD": LIMITED_PW}
    r = CliRunner().invoke(app, ["projector", "status", "--json"], env=env | limited)
    assert r.exit_code == 1, r.output
    error = json.loads(r.output.strip().splitlines()[-1])["error"]
    assert error["code"] == "access denied", error
    message = error["message"]
    assert "$JS.API.STREAM.INFO." in message and "permissions violation" in message
    assert "JETSOURCE_NATS__USER" in message and "JETSOURCE_NATS__CREDS_FILE" in message
    assert "leaderless" not in error and "quorum" not in message
    assert LIMITED_PW not in r.output
