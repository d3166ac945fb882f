"""What a `streams backup` / `restore` into an empty server must carry beyond the
streams' messages, against real servers: the operators' decisions kept in the
read-model control bucket (dead letters discarded with `dlq discard`, the active
model version), and the stream sequences everything else refers to (voids,
discards, horizons, claims) when the stream has gaps (compaction, purged subjects)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorSettings
from tests.cli_env import streams as cli
from tests.cli_env import streams_json as ok
from tests.infra import Server, second_nats
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


def environment(s: ProjectorSettings, url: str) -> dict[str, str]:
    """The CLI's environment for the streams of ``s`` on the server at ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    return env | {
        "JETSOURCE_NATS__URL": url,
        "JETSOURCE_EVENTSTORE__STREAM": s.eventstore.stream,
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": s.eventstore.subject_prefix,
        "JETSOURCE_SNAPSHOTS__STREAM": s.snapshots.stream,
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": s.snapshots.subject_prefix,
        "JETSOURCE_PROJECTOR__DLQ_STREAM": s.projector.dlq_stream,
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": s.projector.dlq_subject_prefix,
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": s.projector.control_bucket,
        "JETSOURCE_PROJECTOR__VALKEY_PREFIX": s.projector.valkey_prefix,
        "JETSOURCE_PROJECTOR__GRAPH_LABEL_PREFIX": s.projector.graph_label_prefix,
    }


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    yield from second_nats(tmp_path)


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=3))
    yield p
    for version in (1, 2):
        await p.model("context", version).drop()
    await p.close()


async def caught_up(p: Projection, name: str, version: int) -> None:
    worker = Worker(p.nc, p.store, p.model(name, version), p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)


async def test_a_discarded_dead_letter_stays_discarded_after_a_restore(
    projection: Projection, fresh: Server, unique: str, tmp_path: Path
) -> None:
    """A poison discarded with `dlq discard`, then backup, restore into an empty
    server, and the projector building the read model again in fresh read stores:
    the poison stays discarded (no dead letter again); the model's active version is
    the one the operator cut over to. Progress, build states and positions are not
    restored: the read stores are rebuilt."""
    p = projection
    await p.store.append("story", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
    await p.store.append("story", [NewEvent(ev.ContextCreated(title="again"))], 1)  # poison
    await p.store.append("other", [NewEvent(ev.ContextCreated(title="o"))], NO_STREAM)
    await p.control.ensure("context", 1)
    await caught_up(p, "context", 1)
    letters = await p.dead_letters.list(p.spec("context", 1))
    assert [d.original_seq for d in letters] == [2]
    report = await admin.dlq_discard(p, "context", dlq_seqs=[letters[0].dlq_seq])
    assert report.done == [letters[0].dlq_seq]
    await p.store.append("story", [NewEvent(ev.DecisionAdded(decision_id="d1", title="x"))], 2)
    await caught_up(p, "context", 1)
    await admin.rebuild(p, "context", 2)
    await admin.cutover(p, "context", 2)
    # (The digest would differ: a restored message's stored time is the restore's.)
    want = [await p.model("context", 2).position(s) for s in ("story", "other")]
    assert want == [3, 1]

    folder = tmp_path / "backup"
    source = environment(p.settings, p.settings.nats_url())
    backed = {r["role"]: r for r in ok(source, "backup", str(folder))}

    # Restore into an empty server; the read models go to fresh read stores.
    again = p.settings.model_copy(
        update={
            "nats": NatsSettings(url=fresh.url),
            "projector": p.settings.projector.model_copy(
                update={"valkey_prefix": f"r{unique}", "graph_label_prefix": f"R{unique}"}
            ),
        }
    )
    restored = {r["role"]: r for r in ok(environment(again, fresh.url), "restore", str(folder))}
    q = await open_projection(again)
    try:
        # The projector service runs the live versions the control entry names.
        control = await q.control.ensure("context", 1)
        await caught_up(q, "context", control.active)
        assert await q.dead_letters.list(q.spec("context", control.active)) == []
        model = q.model("context", control.active)
        assert [await model.position(s) for s in ("story", "other")] == want
        assert control.active == 2 and control.versions == {2: "live"}
        assert control.discarded == [2] and control.progress == {} and control.last_replay is None
        bucket = p.settings.projector.control_bucket
        assert backed["read-models"]["stream"] == f"KV_{bucket}"
        assert backed["read-models"]["messages"] == 1  # one model's entry
        assert restored["read-models"]["stream"] == f"KV_{bucket}"

        # Restored again now that the services provisioned the streams (and may
        # have written to them): refused, exit 1; the decisions alone merge, no change.
        run = cli(environment(again, fresh.url), "restore", str(folder))
        assert run.returncode == 1, run.stdout + run.stderr
        assert f"{p.settings.eventstore.stream} exists and holds messages" in run.stderr
        alone = cli(environment(again, fresh.url), "restore", str(folder), f"--stream=KV_{bucket}")
        assert alone.returncode == 0, alone.stdout + alone.stderr
        same = await q.control.get("context")
        assert same is not None and same.revision == control.revision
    finally:
        for version in (1, 2):
            await q.model("context", version).drop()
        await q.close()
