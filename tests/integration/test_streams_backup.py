"""`jetsource streams backup DIR` / `restore DIR` against a real nats-server: every
message of the event, snapshot and dead-letter streams (subject, headers, sequence,
stored time, data) to files, and back in order into new streams beside the old ones
(renamed, subjects moved) or into an empty server under the same names."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import nats
import pytest

from jetsource.core.envelope import NO_STREAM
from jetsource.core.settings import EventStoreSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.cli_env import streams as cli
from tests.cli_env import streams_json as ok
from tests.eventstore_fixtures import created, decision
from tests.infra import Server, start_nats
from tests.stream_reads import stored

pytestmark = pytest.mark.integration


def environment(url: str, unique: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    return env | {
        "JETSOURCE_NATS__URL": url,
        "JETSOURCE_EVENTSTORE__STREAM": f"BE_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"be{unique}.events",
        "JETSOURCE_SNAPSHOTS__STREAM": f"BS_{unique}",
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": f"bs{unique}.snapshots",
        "JETSOURCE_PROJECTOR__DLQ_STREAM": f"BD_{unique}",
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": f"bd{unique}",
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": f"BR_{unique}",
        # What other services keep, under names of this test alone (the process and
        # omni event streams are the registry's: PROCESS_EVENTS, OMNI_EVENTS).
        "JETSOURCE_EVENTSTORE__KEYS_BUCKET": f"BK_{unique}",
        "JETSOURCE_OMNI__RAW_STREAM": f"BW_{unique}",
        "JETSOURCE_OMNI__RAW_SUBJECT_PREFIX": f"bw{unique}.raw",
        "JETSOURCE_OMNI__IDENTITY_BUCKET": f"BH_{unique}",
        "JETSOURCE_OBSERVER__CLAIMS_BUCKET": f"BC_{unique}",
    }


CONTEXT = ("events", "snapshots", "dead-letters")


async def fill(env: dict[str, str], unique: str) -> None:
    """Events of two stories, a snapshot-stream message and a dead letter."""
    nc = await nats.connect(env["JETSOURCE_NATS__URL"])
    try:
        store = JetStreamEventStore(
            nc,
            registry,
            EventStoreSettings(
                stream=env["JETSOURCE_EVENTSTORE__STREAM"],
                subject_prefix=env["JETSOURCE_EVENTSTORE__SUBJECT_PREFIX"],
            ),
        )
        await store.start()
        await store.append("story-1", [created("one"), decision(1, "body")], NO_STREAM)
        await store.append("story-2", [created("two")], NO_STREAM)
        await store.append("story-1", [decision(2)], 2)
        js = nc.jetstream()
        await js.publish(f"bs{unique}.snapshots.story-1", b"\x00snapshot", headers={"A": "1"})
        await js.publish(
            f"bd{unique}.context.v1.story-1",
            b"poison",
            headers={
                "Nats-Msg-Id": "context-v1-3",
                "Jetsource-Dlq-Original-Subject": f"be{unique}.events.story-1.DecisionAdded",
                "Jetsource-Dlq-Reason": "handler error",
            },
        )
    finally:
        await nc.close()


def lines(folder: Path, stream: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = [json.loads(x) for x in (folder / f"{stream}.jsonl").read_text().splitlines()]
    return rows[0], rows[1:]


async def test_backup_then_restore_beside_the_old_streams(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    env = environment(nats_server.url, unique)
    ok(env, "ensure")
    await fill(env, unique)
    folder = tmp_path / "backup"

    backed = {row["role"]: row for row in ok(env, "backup", str(folder))}
    assert {r: backed[r]["messages"] for r in CONTEXT} == {
        "events": 4,
        "snapshots": 1,
        "dead-letters": 1,
    }
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "jetsource-streams-backup/1"
    streams = [s["stream"] for s in manifest["streams"]]
    assert streams[0] == f"BE_{unique}"
    assert {f"BS_{unique}", f"BD_{unique}", "PROCESS_EVENTS", "OMNI_EVENTS"} <= set(streams)
    assert f"KV_BR_{unique}" not in streams  # its decisions only: manifest["read_models"]
    assert manifest["read_models"]["stream"] == f"KV_BR_{unique}"

    # The files hold what the server stores: sequence, subject, time, headers, data.
    originals = await stored(nats_server.url, f"BE_{unique}")
    header, messages = lines(folder, f"BE_{unique}")
    assert header["config"]["subjects"] == [f"be{unique}.events.>", f"be{unique}.voids.>"]
    assert header["state"]["messages"] == 4
    assert [m["seq"] for m in messages] == [o.seq for o in originals] == [1, 2, 3, 4]
    for m, o in zip(messages, originals, strict=True):
        assert m["subject"] == o.subject
        assert base64.b64decode(m["data"]) == o.data
        assert m["headers"]["Nats-Msg-Id"] == o.headers["Nats-Msg-Id"]
        assert "Nats-Sequence" not in m["headers"] and "Nats-Stream" not in m["headers"]
        assert m["time"].endswith("Z") and m["time"][:4].isdigit()

    # Restore into new streams with their own subjects, on the same server.
    renames = [
        f"--rename=BE_{unique}=RE_{unique}",
        f"--rename=BS_{unique}=RS_{unique}",
        f"--rename=BD_{unique}=RD_{unique}",
        f"--subject-prefix=be{unique}=re{unique}",
        f"--subject-prefix=bs{unique}=rs{unique}",
        f"--subject-prefix=bd{unique}=rd{unique}",
        # The context streams alone (the process and omni ones are in use, here).
        f"--stream=BE_{unique}",
        f"--stream=BS_{unique}",
        f"--stream=BD_{unique}",
    ]
    restored = {row["role"]: row for row in ok(env, "restore", str(folder), *renames)}
    assert set(restored) == set(CONTEXT)
    assert restored["events"] == {
        "role": "events",
        "source": f"BE_{unique}",
        "stream": f"RE_{unique}",
        "messages": 4,
        "same_sequences": True,
    }
    assert restored["snapshots"]["messages"] == 1 and restored["dead-letters"]["messages"] == 1

    copies = await stored(nats_server.url, f"RE_{unique}")
    assert [c.seq for c in copies] == [1, 2, 3, 4]
    for c, o in zip(copies, originals, strict=True):
        assert c.subject == o.subject.replace(f"be{unique}.", f"re{unique}.", 1)
        assert c.data == o.data
        assert c.headers["Nats-Msg-Id"] == o.headers["Nats-Msg-Id"]
        assert c.time_ns >= o.time_ns  # stored again now: the time of the restore
    letter = (await stored(nats_server.url, f"RD_{unique}"))[0]
    assert letter.subject == f"rd{unique}.context.v1.story-1"
    assert letter.headers["Jetsource-Dlq-Original-Subject"] == (
        f"re{unique}.events.story-1.DecisionAdded"
    )
    assert letter.headers["Jetsource-Dlq-Reason"] == "handler error"

    # The restored config is the backed-up one (its duplicate window too), renamed.
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info(f"RE_{unique}")
    finally:
        await nc.close()
    config = info.config.as_dict()
    assert config["subjects"] == [f"re{unique}.events.>", f"re{unique}.voids.>"]
    assert config["duplicate_window"] == header["config"]["duplicate_window"]
    assert config["deny_delete"] is True and config["deny_purge"] is True

    # The event store reads the restored stream as it read the old one.
    nc = await nats.connect(nats_server.url)
    try:
        store = JetStreamEventStore(
            nc,
            registry,
            EventStoreSettings(stream=f"RE_{unique}", subject_prefix=f"re{unique}.events"),
        )
        await store.start()
        history = await store.read_aggregate("story-1")
        assert [r.version for r in history] == [1, 2, 3]
        await store.close()
    finally:
        await nc.close()

    # The same restore again leaves the streams it made be (nothing written twice);
    # one into streams that hold other messages is refused, nothing written.
    again = cli(env, "restore", str(folder), *renames, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout) == list(restored.values())
    assert f"RE_{unique}: restored from this backup already" in again.stderr
    assert len(await stored(nats_server.url, f"RE_{unique}")) == 4
    onto = cli(env, "restore", str(folder), f"--stream=BE_{unique}")
    assert onto.returncode == 1
    assert f"BE_{unique} exists and holds messages" in onto.stdout + onto.stderr
    assert len(await stored(nats_server.url, f"BE_{unique}")) == 4


async def test_restore_into_an_empty_server_keeps_names(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    env = environment(nats_server.url, unique)
    ok(env, "ensure")
    await fill(env, unique)
    ok(env, "backup", str(tmp_path / "b"))
    # A dead letter filed twice (retried, refused again, minutes apart) keeps its message
    # id: both go back in, though the restore writes faster than any duplicate window.
    dlq = tmp_path / "b" / f"BD_{unique}.jsonl"
    rows = dlq.read_text().splitlines()
    again = json.loads(rows[-1]) | {"seq": 2}
    dlq.write_text("\n".join([*rows, json.dumps(again)]) + "\n")
    manifest_file = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    # As an older jetsource wrote it: the three context streams, without the new fields.
    old_fields = ("role", "stream", "file", "messages", "first_seq", "last_seq", "subjects")
    by_name = {s["stream"]: s for s in manifest["streams"]}
    manifest["streams"] = [
        {k: by_name[name][k] for k in old_fields}
        for name in (f"BE_{unique}", f"BS_{unique}", f"BD_{unique}")
    ]
    manifest["streams"][2] |= {"messages": 2, "last_seq": 2}
    del manifest["read_models"]  # older backups hold no read-model decisions
    manifest_file.write_text(json.dumps(manifest))
    fresh = start_nats(tmp_path / "fresh")
    if fresh.url == nats_server.url:
        pytest.skip("an external NATS: no second, empty server to restore into")
    try:
        target = environment(fresh.url, unique)
        restored = ok(target, "restore", str(tmp_path / "b"))
        assert [(r["stream"], r["messages"]) for r in restored] == [
            (f"BE_{unique}", 4),
            (f"BS_{unique}", 1),
            (f"BD_{unique}", 2),
        ]
        letters = await stored(fresh.url, f"BD_{unique}")
        assert [m.headers["Nats-Msg-Id"] for m in letters] == ["context-v1-3"] * 2
        before = await stored(nats_server.url, f"BE_{unique}")
        after = await stored(fresh.url, f"BE_{unique}")
        assert [(m.seq, m.subject, m.data) for m in after] == [
            (m.seq, m.subject, m.data) for m in before
        ]
        # ensure afterwards finds the streams as it would have made them.
        ensured = {row["role"]: row["action"] for row in ok(target, "ensure")}
        assert ensured["events"] in {"unchanged", "updated"}
    finally:
        fresh.stop()


async def fill_every_domain(env: dict[str, str], unique: str) -> dict[str, Any]:
    """Beside fill(): a personal field (sealed under a key of the keys bucket), a
    process's and an omni identity's events, a raw payload, a claim, identity handles."""
    from types import SimpleNamespace

    from jetsource._gen.context.v1 import events_pb2 as ev
    from jetsource.core.envelope import NewEvent
    from jetsource.domains.omni.descriptor import DOMAIN as OMNI
    from jetsource.domains.omni.raw import RawArchive
    from jetsource.domains.omni.settings import OmniOptions
    from jetsource.domains.process.claims import ClaimValue, KvClaims
    from jetsource.domains.process.descriptor import DOMAIN as PROCESS

    url = env["JETSOURCE_NATS__URL"]
    alice = f"alice-{unique}"
    nc = await nats.connect(url)
    shared = SimpleNamespace(eventstore=EventStoreSettings(keys_bucket=f"BK_{unique}"))
    try:
        context = JetStreamEventStore(nc, registry, context_settings(env))
        await context.start()
        await context.append(
            "personal",
            [created("p"), NewEvent(ev.DecisionAdded(decision_id="d1", title="T", author=alice))],
            NO_STREAM,
        )
        await context.close()
        process = JetStreamEventStore(nc, PROCESS.registry, PROCESS.eventstore(shared))
        await process.start()
        assert PROCESS.sample_history is not None and OMNI.sample_history is not None
        steps = PROCESS.sample_history(f"p-{unique}", 3, 0)
        await process.append(f"p-{unique}", [as_new(e) for e in steps], NO_STREAM)
        await process.close()
        omni = JetStreamEventStore(nc, OMNI.registry, OMNI.eventstore(shared))
        await omni.start()
        identity = f"idn-{unique}"
        history = [as_new(m) for m in OMNI.sample_history(identity, 2, 1)]
        await omni.append(identity, history, NO_STREAM)
        await omni.close()
        raw = RawArchive(
            nc, OmniOptions(raw_stream=f"BW_{unique}", raw_subject_prefix=f"bw{unique}.raw")
        )
        await raw.ensure_stream()
        await raw.close()
        await nc.jetstream().publish(f"bw{unique}.raw.r1", b'{"body": 1}')
        claims = KvClaims(nc, f"BC_{unique}")
        claim = ClaimValue("ev-1", 11, 7, 1, 12)
        assert await claims.create("e.p.one", claim) is not None
        handles = await nc.jetstream().create_key_value(bucket=f"BH_{unique}", history=5)
        await handles.put("whatsapp.a", b"idn-old")
        await handles.put("whatsapp.a", identity.encode())
        await handles.put("discord.b", identity.encode())
        return {"alice": alice, "identity": identity, "process": f"p-{unique}", "claim": claim}
    finally:
        await nc.close()


def as_new(event: Any) -> Any:
    from jetsource.core.envelope import NewEvent

    return event if isinstance(event, NewEvent) else NewEvent(event)


def context_settings(env: dict[str, str]) -> EventStoreSettings:
    return EventStoreSettings(
        stream=env["JETSOURCE_EVENTSTORE__STREAM"],
        subject_prefix=env["JETSOURCE_EVENTSTORE__SUBJECT_PREFIX"],
        keys_bucket=env["JETSOURCE_EVENTSTORE__KEYS_BUCKET"],
    )


async def test_backup_holds_every_domain_and_the_keys(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    """The backup recommended before an upgrade restores a working system into an empty
    server: every domain's events, the raw payloads, the claims, the identity handles,
    and the keys without which no personal field can be read."""
    from types import SimpleNamespace

    from jetsource.domains.omni.descriptor import DOMAIN as OMNI
    from jetsource.domains.process.claims import KvClaims
    from jetsource.domains.process.descriptor import DOMAIN as PROCESS

    env = environment(nats_server.url, unique)
    ok(env, "ensure")
    await fill(env, unique)
    made = await fill_every_domain(env, unique)
    folder = tmp_path / "backup"
    backed = {row["stream"]: row for row in ok(env, "backup", str(folder))}
    kv = {f"KV_BK_{unique}": "keys", f"KV_BC_{unique}": "process claims"}
    kv[f"KV_BH_{unique}"] = "omni handles"
    expected = {
        f"BE_{unique}": "events",
        "PROCESS_EVENTS": "process events",
        "OMNI_EVENTS": "omni events",
        f"BS_{unique}": "snapshots",
        f"BD_{unique}": "dead-letters",
        f"BW_{unique}": "omni raw",
        **kv,
    }
    assert {s: backed[s]["role"] for s in expected} == expected
    # Of the read-model control bucket, only the operators' decisions (no model has
    # an entry here): test_streams_backup_decisions.py.
    assert backed[f"KV_BR_{unique}"]["role"] == "read-models"
    assert backed[f"KV_BR_{unique}"]["file"] == "read-models.json"
    assert backed[f"KV_BK_{unique}"]["bucket"] == f"BK_{unique}"
    assert backed[f"KV_BK_{unique}"]["messages"] >= 2  # the pepper, alice's key, ...
    assert backed[f"KV_BH_{unique}"]["messages"] == 3  # history 5: both values of a
    # nats-py made it without direct gets: read from the stream's leader instead.
    assert not lines(folder, f"KV_BH_{unique}")[0]["config"].get("allow_direct")

    fresh = start_nats(tmp_path / "fresh")
    if fresh.url == nats_server.url:
        pytest.skip("an external NATS: no second, empty server to restore into")
    try:
        target = environment(fresh.url, unique)
        restored = {row["stream"]: row for row in ok(target, "restore", str(folder))}
        assert set(restored) == set(backed)
        for name, row in restored.items():
            assert row["messages"] == backed[name]["messages"], name

        nc = await nats.connect(fresh.url)
        shared = SimpleNamespace(eventstore=EventStoreSettings(keys_bucket=f"BK_{unique}"))
        try:
            # Every domain's events read back through its store; the personal field
            # decrypts with the restored keys.
            context = JetStreamEventStore(nc, registry, context_settings(target))
            await context.start()
            personal = await context.read_aggregate("personal")
            assert personal[1].event.author == made["alice"]  # type: ignore[union-attr]
            assert [r.version for r in await context.read_aggregate("story-1")] == [1, 2, 3]
            await context.close()
            process = JetStreamEventStore(nc, PROCESS.registry, PROCESS.eventstore(shared))
            await process.start()
            ledger = await process.read_aggregate(made["process"])
            assert [r.envelope.event_type for r in ledger] == [
                "process_started",
                "level_started",
                "process_completed",
            ]
            await process.close()
            omni = JetStreamEventStore(nc, OMNI.registry, OMNI.eventstore(shared))
            await omni.start()
            person = await omni.read_aggregate(made["identity"])
            assert person[0].event.display_name == "P1"  # type: ignore[union-attr]
            assert len(person) == 2
            await omni.close()
            # Whole streams: the same messages in the same order.
            for name in (f"BE_{unique}", "PROCESS_EVENTS", "OMNI_EVENTS", f"BW_{unique}"):
                before = await stored(nats_server.url, name)
                after = await stored(fresh.url, name)
                assert [(m.subject, m.data) for m in after] == [
                    (m.subject, m.data) for m in before
                ], name
            # The buckets are KV buckets again, as their owners made them.
            js = nc.jetstream()
            handles = await js.key_value(f"BH_{unique}")
            assert (await handles.get("whatsapp.a")).value == made["identity"].encode()
            assert (await handles.status()).history == 5
            claims = KvClaims(nc, f"BC_{unique}")
            got = await claims.get("e.p.one")
            assert got is not None and got[0] == made["claim"]
            keys = (await js.stream_info(f"KV_BK_{unique}")).config
            assert keys.subjects == [f"$KV.BK_{unique}.>"]
            assert keys.max_msgs_per_subject == 1 and keys.allow_rollup_hdrs
        finally:
            await nc.close()
    finally:
        fresh.stop()

    # A bucket renamed on restore stays a bucket: its subjects move with it; a name
    # that is no bucket's is refused before anything is written.
    moved = ok(
        env,
        "restore",
        str(folder),
        f"--stream=KV_BH_{unique}",
        f"--rename=KV_BH_{unique}=KV_BH2_{unique}",
    )
    assert [(r["stream"], r["messages"]) for r in moved] == [(f"KV_BH2_{unique}", 3)]
    nc = await nats.connect(nats_server.url)
    try:
        copy = await nc.jetstream().key_value(f"BH2_{unique}")
        assert (await copy.get("discord.b")).value == made["identity"].encode()
    finally:
        await nc.close()
    refused = cli(
        env,
        "restore",
        str(folder),
        f"--stream=KV_BC_{unique}",
        f"--rename=KV_BC_{unique}=CLAIMS_{unique}",
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "KV_<bucket>" in refused.stdout + refused.stderr
