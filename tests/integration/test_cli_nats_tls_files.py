"""The CLI with NATS TLS files that do not load (a CA file that is no PEM): the admin
groups said "unavailable" (exit 3, retry) naming no setting. Now each says it as it
says NATS refusing this client's certificate: exit 1 naming the TLS settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jetsource.cli.app import app
from tests.infra import Server


@pytest.mark.parametrize(
    "group", [("projector", "status"), ("archive", "list"), ("streams", "ensure")]
)
def test_the_cli_names_the_nats_tls_settings_not_unavailable(
    nats_server: Server, tmp_path: Path, group: tuple[str, ...]
) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    env = {
        "JETSOURCE_NATS__URL": nats_server.url.replace("nats://", "tls://"),
        "JETSOURCE_NATS__TLS__CA_FILE": str(junk),
        "JETSOURCE_SECRETS_DIR": "/nonexistent-secrets",
        "JETSOURCE_ARCHIVE__URL": str(tmp_path / "archive"),
        "JETSOURCE_ADMIN_CONNECT_TIMEOUT_S": "5",
    }
    r = CliRunner().invoke(app, [*group, "--json"], env=env)
    assert r.exit_code == 1, r.output
    error = json.loads(r.output.strip().splitlines()[-1])["error"]
    assert "JETSOURCE_NATS__TLS__CA_FILE" in error["message"], error
