"""What `repair void` reports about the dead letters of a story, per model version, and
its exit code when something is left undone.

A poison filed by two versions of one model (the live one and one being built): the
void retried by model name alone, so while it handled v1 it retried v2's letter of the
voided message (not yet dropped) and reported it as "still undecodable" under v1, exit
0. Now each version's letter of the voided sequence goes first, then each version's
other letters; and a letter that fails again makes the command exit 1."""

from __future__ import annotations

import json
import subprocess

import pytest

from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.repair import void_sequence
from jetsource.projection.settings import ProjectorSettings
from tests.cli_env import cli_env, jetsource
from tests.infra import Server

pytestmark = pytest.mark.integration
VOID = ("--reason", "junk", "--yes", "--domain", "context")


def _env(nats_server: Server, valkey_server: Server, unique: str) -> dict[str, str]:
    return cli_env(
        nats_server.url,
        unique,
        valkey_url=valkey_server.url,
        JETSOURCE_PROJECTOR__VALKEY_PREFIX=f"t{unique}",
        JETSOURCE_PROJECTOR__MODELS='["context"]',
    )


async def test_each_version_reports_its_own_letters_and_a_failure_exits_1(
    nats_server: Server, valkey_server: Server, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(nats_server, valkey_server, unique)
    for name, value in env.items():
        if name.startswith("JETSOURCE_"):
            monkeypatch.setenv(name, value)
    p = await open_projection(ProjectorSettings.load())
    try:
        store = p.store
        raws = []
        for junk in (b"\xff\x00junk", b"\xfe\x01more junk"):
            ack = await p.nc.request(f"ce{unique}.events.s1.ContextCreated", junk, 5)
            seq = json.loads(ack.data)["seq"]
            raw = await jsapi.direct_get(store._replies, store.settings.stream, {"seq": seq}, 5)
            assert raw is not None
            raws.append(raw)
        # Both versions of the model filed the first; v1 also the second (behind it).
        for version in (1, 2):
            await p.dead_letters.publish(p.spec("context", version), "s1", raws[0], "junk", 1)
        await p.dead_letters.publish(p.spec("context", 1), "s1", raws[1], "junk", 1)

        report = await void_sequence(p, raws[0].seq, "junk", "tester", domain="context")
        v1, v2 = report.models["context v1"], report.models["context v2"]
        assert len(v1["dropped"] + v1["stepped_over"]) == 1
        assert len(v2["dropped"] + v2["stepped_over"]) == 1
        assert v2["failed"] == {} and v2["retried"] == []  # v2 had nothing behind it
        # v1's letter behind the voided one is its own and still undecodable: reported
        # under v1, and only there.
        (failed,) = v1["failed"]
        assert [d.original_seq for d in await p.dead_letters.list()] == [raws[1].seq]
        assert failed == (await p.dead_letters.list())[0].dlq_seq

        # The command line: the second junk voided, nothing left: exit 0; a void that
        # leaves a letter failing again: exit 1, saying so.
        await p.dead_letters.publish(p.spec("context", 1), "s1", raws[1], "junk", 1)
        ack = await p.nc.request(f"ce{unique}.events.s1.ContextCreated", b"\xfdthird", 5)
        third = json.loads(ack.data)["seq"]
        raw = await jsapi.direct_get(store._replies, store.settings.stream, {"seq": third}, 5)
        assert raw is not None
        await p.dead_letters.publish(p.spec("context", 1), "s1", raw, "junk", 1)
    finally:
        await p.close()

    def repair(seq: int) -> subprocess.CompletedProcess[str]:
        return jetsource(env, "repair", "void", "--seq", str(seq), *VOID)

    left = repair(raws[1].seq)
    assert left.returncode == 1, (left.stdout, left.stderr)
    assert "did not take it up" in left.stderr and "context v1" in left.stderr
    assert "still undecodable" in left.stdout
    done = repair(third)
    assert done.returncode == 0, (done.stdout, done.stderr)
