"""End to end: a running jetsource-ingest process configured through its environment
(``JETSOURCE_INGEST__INSTANCES``) with a Discord ``interactions`` instance, driven as
Discord drives an Interactions Endpoint URL: the PING it sends before accepting the URL,
a request with a bad signature (401), then a slash command stored, resolved and readable.
A public key that is no Ed25519 key stops the process at its start, naming the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jetsource.domains.omni.settings import InstanceConfig
from jetsource.ingest.settings import IngestSettings
from tests.fixtures.omni_interactions import raw
from tests.infra import Server
from tests.integration.omni.harness import IngressProcess, caught_up, omni_settings, projector

pytestmark = pytest.mark.e2e

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def signed(payload: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "content-type": "application/json",
        "user-agent": "Discord-Interactions/1.0 (+https://discord.com)",
        "x-signature-ed25519": KEY.sign(ts.encode() + payload).hex(),
        "x-signature-timestamp": ts,
    }


@pytest.fixture
def isettings(nats_server: Server, valkey_server: Server, unique: str) -> IngestSettings:
    return omni_settings(
        nats_server.url,
        valkey_server.url,
        unique,
        instances={
            "acme-app": InstanceConfig(
                provider="discord", format="interactions", public_key=PUBLIC.upper()
            )
        },
    )


@pytest.fixture
def ingress(isettings: IngestSettings, tmp_path: Path) -> Iterator[IngressProcess]:
    process = IngressProcess(isettings, tmp_path / "ingest")
    process.start()
    yield process
    process.stop()


async def test_discord_accepts_the_url_and_a_command_is_stored_and_read(
    isettings: IngestSettings, ingress: IngressProcess
) -> None:
    url = f"{ingress.url}/webhooks/discord/acme-app"
    async with httpx.AsyncClient(timeout=10) as http:
        ping = raw("ping.json")
        pong = await http.post(url, content=ping, headers=signed(ping))
        assert pong.status_code == 200, pong.text
        assert pong.headers["content-type"] == "application/json"
        assert pong.json() == {"type": 1}
        forged = {**signed(ping), "x-signature-ed25519": "00" * 64}
        refused = await http.post(url, content=ping, headers=forged)
        assert refused.status_code == 401
        assert refused.json()["error"]["field"] == "x-signature-ed25519"

        command = raw("slash_command.json")
        answer = await http.post(url, content=command, headers=signed(command))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"type": 4, "data": {"content": "Received.", "flags": 64}}
        event_id = answer.headers["x-jetsource-event-id"]

        async with projector(isettings) as p:
            await caught_up(p)
            view = (await http.get(f"{ingress.url}/api/v1/events/{event_id}")).json()
        event = view["event"]["event"]
        assert event["content_text"].startswith("/ticket open topic:Billing question")
        assert event["sender_handle"] == "80351110224678912"
        assert event["sender_identity_id"].startswith("idn-")
        raw_record = (
            await http.get(f"{ingress.url}/api/v1/raw/{answer.headers['x-jetsource-raw-id']}")
        ).json()
        assert raw_record["verdict"] == "VERDICT_ACCEPTED"
        # The interaction's token (a credential for 15 minutes) is not archived; the
        # event keeps it in metadata.extra.interaction_token for a worker to answer with.
        assert json.loads(raw_record["body_text"]) == {
            **json.loads(command),
            "token": "[redacted]",
        }
        assert raw_record["body_redacted"] == ["token"]


@pytest.mark.parametrize("key", ["not-a-key", "ab" * 31, "zz" * 32])
def test_a_public_key_that_is_no_ed25519_key_stops_the_start_naming_the_setting(
    key: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env["JETSOURCE_INGEST__INSTANCES"] = json.dumps(
        {"acme-app": {"provider": "discord", "format": "interactions", "public_key": key}}
    )
    done = subprocess.run(
        [sys.executable, "-m", "jetsource.ingest.server"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "JETSOURCE_INGEST__INSTANCES[acme-app][public_key]" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
