"""`jetsource streams ensure` as the Helm hook and the compose one-shot run it: twice in
a row changes nothing, stored events stay, a changed setting is applied."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import nats
import pytest

from jetsource.core.envelope import NO_STREAM
from jetsource.devstack.servers import free_port
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.cli_env import cli_env, event_store_settings, jetsource
from tests.eventstore_fixtures import created
from tests.infra import Server

pytestmark = pytest.mark.integration


@pytest.fixture
def env(nats_server: Server, unique: str) -> dict[str, str]:
    """Stream names of this test's own on the shared server."""
    return cli_env(nats_server.url, unique)


def ensure(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return jetsource(env, "streams", "ensure", *args)


def ensured(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    run = ensure(env, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    return {row["role"]: row for row in json.loads(run.stdout)}


async def stream_config(url: str, name: str) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(name)
        return info.config.as_dict()
    finally:
        await nc.close()


async def append_one(env: dict[str, str]) -> None:
    nc = await nats.connect(env["JETSOURCE_NATS__URL"])
    store = JetStreamEventStore(nc, registry, event_store_settings(env))
    await store.start()
    await store.append("story-1", [created()], NO_STREAM)
    await store.close()
    await nc.close()


async def test_ensure_creates_every_stream_then_changes_nothing(
    env: dict[str, str], unique: str
) -> None:
    first = ensured(env)
    # Every other registered domain's stream is ensured too (fixed names, shared by the
    # session's tests: made by whichever test came first).
    domains = {r for r in first if r.endswith(" events")}
    assert "process events" in domains
    assert first["process events"]["stream"] == "PROCESS_EVENTS"
    assert {r: row["action"] for r, row in first.items() if r not in domains} == {
        "events": "created",
        "snapshots": "created",
        "dead letters": "created",
        "read-models": "created",
    }
    assert first["events"]["stream"] == f"CE_{unique}"
    # The events, and the operators' voids beside them (`jetsource repair void`).
    assert first["events"]["subjects"] == [f"ce{unique}.events.>", f"ce{unique}.voids.>"]
    assert first["snapshots"]["subjects"] == [f"cs{unique}.snapshots.>"]
    assert first["dead letters"]["subjects"] == [f"dlq{unique}.>"]
    assert first["read-models"]["stream"] == f"KV_RM_{unique}"
    events = await stream_config(env["JETSOURCE_NATS__URL"], f"CE_{unique}")
    assert events["deny_delete"] and events["deny_purge"] and events["discard"] == "new"

    await append_one(env)
    second = ensured(env)
    assert {row["action"] for row in second.values()} == {"unchanged"}
    assert second["events"]["messages"] == 1  # provisioning again keeps what was stored
    assert await stream_config(env["JETSOURCE_NATS__URL"], f"CE_{unique}") == events


async def test_ensure_brings_an_existing_stream_to_changed_settings(
    env: dict[str, str], unique: str
) -> None:
    ensured(env)
    changed = ensured(env | {"JETSOURCE_EVENTSTORE__MAX_MSG_SIZE": "65536"})
    assert changed["events"]["action"] == "updated"
    assert changed["snapshots"]["action"] == "unchanged"
    config = await stream_config(env["JETSOURCE_NATS__URL"], f"CE_{unique}")
    assert config["max_msg_size"] == 65536


def test_ensure_without_nats_fails_within_its_timeout(env: dict[str, str]) -> None:
    run = ensure(env | {"JETSOURCE_NATS__URL": f"nats://127.0.0.1:{free_port()}"}, "--timeout", "2")
    # As every admin command: exit 3 (unavailable), the message on stderr, none on stdout.
    assert run.returncode == 3, run
    assert "did not answer within 2 s" in run.stderr
    assert "ConnectionRefusedError" in run.stderr  # the reason, not a traceback per retry
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
