"""Disaster recovery and rebuilds on a compacted stream (real NATS and Valkey): a
read model built from scratch on the compacted stream (archive + live) equals the
one built before compaction; `restore` into a new stream gives every message back
with its sequence, headers and envelope bytes; a read model built from the restored
stream equals the original; `verify` finds a damaged segment and a read through it
fails loudly, never answering from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jetsource.archive.history import ArchivedHistory, open_archive
from jetsource.archive.restore import restore
from jetsource.archive.segment import SegmentError, stored_headers
from jetsource.core.settings import EventStoreSettings, JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import H_RECORDED_AT
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at, compacting_settings, middle_time
from tests.projector_fixtures import seed, story_ids

pytestmark = pytest.mark.integration


async def dump(p: Projection, stream: str) -> list[tuple[int, str, dict[str, str], bytes]]:
    out = []
    seq = 1
    while True:
        page = await jsapi.direct_get_page(p.store._replies, stream, None, seq, 500, 5.0)
        out += [(m.seq, m.subject, stored_headers(m.headers), m.data) for m in page.messages]
        if page.pending == 0 or not page.messages:
            return out
        seq = page.messages[-1].seq + 1


async def stored_times(p: Projection, stream: str) -> dict[int, int]:
    page = await jsapi.direct_get_page(p.store._replies, stream, None, 1, 1000, 5.0)
    assert page.pending == 0
    return {m.seq: m.time_ns for m in page.messages}


async def project(p: Projection, name: str, version: int) -> int:
    """Run the model's worker until it has caught up; how many events it applied."""
    worker = Worker(
        p.nc, p.store_for(name), p.model(name, version), p.dead_letters, p.settings.projector
    )
    await worker.run(until_caught_up=True)
    return worker.stats.applied


def moved(subject: str, old: str, new: str) -> str:
    return new + subject[len(old) :] if subject.startswith(old + ".") else subject


async def test_rebuild_restore_and_verify_on_a_compacted_stream(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> None:
    base = compacting_settings(settings, unique, tmp_path / "archive")
    p = await open_projection(base)
    restored: Projection | None = None
    try:
        stories = story_ids(6, "r")
        await seed(p.store, stories, 30, seed=3)  # interleaved in the stream
        records = {s: await p.store.read_aggregate(s) for s in stories}
        for s in stories:
            await save_snapshots(p.snapshots, records[s], [20])
        assert await project(p, "context", 1) == 6 * 30
        digest = await p.model("context", 1).digest()
        before = await dump(p, p.store.settings.stream)
        times = await stored_times(p, p.store.settings.stream)
        everything = sorted(
            r for recs in records.values() for r in [r.recorded_at_ns for r in recs]
        )

        compacted = await compact_at(p, middle_time([r for s in stories for r in records[s]]))
        assert compacted.report.purged > 0
        assert compacted.horizon_ns >= everything[0]
        assert len(await dump(p, p.store.settings.stream)) == len(before) - compacted.report.purged

        # A build from scratch on the compacted stream: archive, then live stream.
        rebuilt = await admin.rebuild(p, "context", 2)
        assert await p.model("context", 2).digest() == digest
        assert rebuilt.checkpoint == before[-1][0]

        # Restore into a new stream: same sequences, headers and bytes; subjects moved.
        old_root = p.store.settings.subject_prefix.split(".")[0]
        new_root = f"rs{unique}"
        info = await p.store.stream_info()
        archive = open_archive(p.settings, p.store.settings.stream)
        report = await restore(
            p.store._replies,
            archive,
            info["config"],
            f"RS_{unique}",
            {old_root: new_root},
            5.0,
        )
        assert (report.from_archive, report.gaps) == (compacted.report.archived, 0)
        target = f"RS_{unique}"
        back = await dump(p, target)
        expected: list[Any] = [
            (seq, moved(subject, old_root, new_root), headers, data)
            for seq, subject, headers, data in before
        ]
        strip = ("Nats-Expected-", "Nats-Batch-", "Nats-Required-Api-Level")

        def comparable(rows: list[Any]) -> list[Any]:
            return [
                (
                    seq,
                    subject,
                    {k: v for k, v in h.items() if not k.startswith(strip) and k != H_RECORDED_AT},
                    data,
                )
                for seq, subject, h, data in rows
            ]

        assert comparable(back) == comparable(expected)
        # The time each was first recorded goes with it (the stream stamps it anew).
        assert [int(h[H_RECORDED_AT]) for _, _, h, _ in back] == [
            times[seq] for seq, _, _, _ in before
        ]
        config = (await jsapi.api(p.store._replies, f"STREAM.INFO.{target}", {}, 5.0))["config"]
        assert config["deny_delete"] is True and config["deny_purge"] is False
        # Another policy for the new stream (how a keep-forever stream starts compacting,
        # and here the other way round): its protections follow it.
        kept = await restore(
            p.store._replies,
            archive,
            info["config"],
            f"RK_{unique}",
            {old_root: f"rk{unique}"},
            5.0,
            retention="forever",
        )
        assert kept.last_seq == before[-1][0]
        config = (await jsapi.api(p.store._replies, f"STREAM.INFO.RK_{unique}", {}, 5.0))["config"]
        assert config["deny_purge"] is True and config["deny_delete"] is True

        # A read model built from the restored stream equals the original.
        restored = await open_projection(
            base.model_copy(
                update={
                    "eventstore": EventStoreSettings(
                        stream=target, subject_prefix=f"{new_root}.events"
                    ),
                    "projector": base.projector.model_copy(
                        update={
                            "valkey_prefix": f"rs{unique}",
                            "control_bucket": f"RC_{unique}",
                            "dlq_stream": f"RD_{unique}",
                            "dlq_subject_prefix": f"rd{unique}",
                        }
                    ),
                }
            )
        )
        assert await project(restored, "context", 1) == 6 * 30
        assert await restored.model("context", 1).digest() == digest

        # A damaged segment: verify names it, and a read through it fails loudly.
        entry = (await archive.entries())[0]
        path = tmp_path / "archive" / entry.name
        blob = bytearray(path.read_bytes())
        blob[-5] ^= 0xFF
        path.write_bytes(bytes(blob))
        fresh = open_archive(p.settings, p.store.settings.stream)
        verdict = await fresh.verify()
        assert list(verdict.corrupt) == [entry.name] and not verdict.passed
        victim = next(iter(entry.aggregates))
        with pytest.raises(SegmentError):
            await ArchivedHistory(p.store, fresh).read_aggregate(victim)
    finally:
        for version in (1, 2):
            await p.model("context", version).drop()
        await p.close()
        if restored is not None:
            await restored.model("context", 1).drop()
            await restored.close()
