"""`jetsource repair void` as an operator runs it: refuses without --yes, names what
holds no event, voids a poisoned sequence (JSON report for scripts), says so again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from typing import NamedTuple

import nats
import pytest
from nats.aio.client import Client as NATS

from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import EventStoreSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.cli_env import cli_env, event_store_settings, jetsource
from tests.infra import Server

pytestmark = pytest.mark.integration


def repair(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return jetsource(env, "repair", "void", *args)


class Junk(NamedTuple):
    env: dict[str, str]
    nc: NATS
    cfg: EventStoreSettings
    store: JetStreamEventStore
    seq: int


@contextlib.asynccontextmanager
async def junk_in_s1(nats_url: str, valkey_url: str, unique: str) -> AsyncIterator[Junk]:
    """The command line's environment for the test's names, its streams made (`streams
    ensure`), a client (drained after) and a store of the context stream, and a message
    that decodes as no event published as story s1's: its sequence."""
    env = cli_env(nats_url, unique, valkey_url=valkey_url)
    ensure = await asyncio.to_thread(jetsource, env, "streams", "ensure")
    assert ensure.returncode == 0, ensure.stderr
    nc = await nats.connect(nats_url)
    try:
        cfg = event_store_settings(env)
        store = JetStreamEventStore(nc, registry, cfg)
        ack = await nc.request(f"ce{unique}.events.s1.ContextCreated", b"\xff\x00junk", 5)
        yield Junk(env, nc, cfg, store, json.loads(ack.data)["seq"])
    finally:
        await nc.drain()


async def test_repair_void_from_the_command_line(
    nats_server: Server, valkey_server: Server, unique: str
) -> None:
    async with junk_in_s1(nats_server.url, valkey_server.url, unique) as junk:
        env, nc, cfg, store, seq = junk
        with pytest.raises(CorruptEventError):
            await store.read_aggregate("s1")

        refused = repair(env, "--seq", str(seq), "--reason", "test")
        assert refused.returncode == 2 and "--yes" in refused.stderr
        nothing = repair(env, "--seq", "999999", "--reason", "test", "--yes")
        assert nothing.returncode == 1 and "holds no event" in nothing.stderr

        # Other domains' streams on this server (the session's) may hold an event at the
        # same sequence, and no dead letter names it: the void names its domain.
        done = repair(
            env,
            *("--seq", str(seq), "--reason", "junk", "--actor", "ops", "--yes", "--json"),
            *("--domain", "context"),
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["seq"], report["aggregate_id"], report["voided_before"]) == (
            seq,
            "s1",
            False,
        )
        assert await JetStreamEventStore(nc, registry, cfg).read_aggregate("s1") == []
        # Voided before in the context stream: found without --domain.
        again = repair(env, "--seq", str(seq), "--reason", "again", "--yes")
        assert again.returncode == 0 and "already voided" in again.stdout
        assert f"of CE_{unique} (context)" in again.stdout

        # A valid event, named with its domain: voided, and read as a no-op at its place.
        from jetsource._gen.context.v1 import events_pb2 as ev
        from jetsource.core.envelope import NO_STREAM, NewEvent

        good = await store.append("s2", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
        unknown = repair(
            env, "--seq", str(good.stream_seqs[0]), "--reason", "r", "--yes", "--domain", "nope"
        )
        assert unknown.returncode != 0 and "unknown domain 'nope'" in unknown.stderr
        assert await JetStreamEventStore(nc, registry, cfg).last_version("s2") == 1
        named = repair(
            env,
            *("--seq", str(good.stream_seqs[0]), "--reason", "mistake", "--yes"),
            *("--domain", "context", "--json"),
        )
        assert named.returncode == 0, named.stderr
        summary = json.loads(named.stdout)
        assert (summary["domain"], summary["stream"], summary["aggregate_id"]) == (
            "context",
            f"CE_{unique}",
            "s2",
        )
        fresh = JetStreamEventStore(nc, registry, cfg)
        await fresh.start()  # knows every void recorded so far
        assert fresh.known_voided(good.stream_seqs[0])
        assert await store.voided("s2", good.stream_seqs[0])  # heard as it was recorded
        assert (await fresh.read_aggregate("s2"))[0].event_type == "ContextCreated"
        await fresh.close()
