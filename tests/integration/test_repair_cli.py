"""`jetsource repair void` as an operator runs it: refuses without --yes, names what
holds no event, voids a poisoned sequence (JSON report for scripts), says so again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import nats
import pytest

from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import EventStoreSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.infra import Server

pytestmark = pytest.mark.integration


def repair(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetsource", "repair", "void", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_repair_void_from_the_command_line(
    nats_server: Server, valkey_server: Server, unique: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")} | {
        "JETSOURCE_NATS__URL": nats_server.url,
        "JETSOURCE_VALKEY__URL": valkey_server.url,
        "JETSOURCE_EVENTSTORE__STREAM": f"CE_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"ce{unique}.events",
        "JETSOURCE_SNAPSHOTS__STREAM": f"CS_{unique}",
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": f"cs{unique}.snapshots",
        "JETSOURCE_PROJECTOR__DLQ_STREAM": f"DLQ_{unique}",
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": f"dlq{unique}",
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": f"RM_{unique}",
    }
    ensure = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetsource", "streams", "ensure"],
        env=env,
        capture_output=True,
    )
    assert ensure.returncode == 0, ensure.stderr
    nc = await nats.connect(nats_server.url)
    try:
        cfg = EventStoreSettings(stream=f"CE_{unique}", subject_prefix=f"ce{unique}.events")
        store = JetStreamEventStore(nc, registry, cfg)
        ack = await nc.request(f"ce{unique}.events.s1.ContextCreated", b"\xff\x00junk", 5)
        seq = json.loads(ack.data)["seq"]
        with pytest.raises(CorruptEventError):
            await store.read_aggregate("s1")

        refused = repair(env, "--seq", str(seq), "--reason", "test")
        assert refused.returncode == 2 and "--yes" in refused.stderr
        nothing = repair(env, "--seq", "999999", "--reason", "test", "--yes")
        assert nothing.returncode == 1 and "holds no event" in nothing.stderr

        done = repair(
            env, "--seq", str(seq), "--reason", "junk", "--actor", "ops", "--yes", "--json"
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["seq"], report["aggregate_id"], report["voided_before"]) == (
            seq,
            "s1",
            False,
        )
        assert await JetStreamEventStore(nc, registry, cfg).read_aggregate("s1") == []
        again = repair(env, "--seq", str(seq), "--reason", "again", "--yes")
        assert again.returncode == 0 and "already voided" in again.stdout
    finally:
        await nc.drain()
