"""A store that refuses the writes of the in-flight window a worker judges at its start
(after a restart, or the worker's own restart after a crash) is an outage /healthz names.

The worker retries the window until the store writes (nothing new is taken before it),
but it was not "running" yet: ``store_outage`` and ``refusing`` said nothing, so a
snapshotter whose snapshot stream was full (``max_file_store``) answered /healthz 200
"ok" while it retried for minutes. Now they say it as they do once running.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import SnapshotSettings
from jetsource.eventstore import jsapi
from jetsource.projection.contract import TransientError
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorOptions
from jetsource.projection.snapshots import SnapshotModel
from tests.unit.test_projector_gauges_truth import DownModel, FakeDeadLetters, FakeStore


async def test_a_store_refusing_the_start_window_is_named_while_retried() -> None:
    nc: Any = type("Nc", (), {"new_inbox": staticmethod(lambda: "_INBOX.unit")})()
    options = ProjectorOptions(store_outage_after_s=0.05, backoff_s=[0.01])
    dlq: Any = FakeDeadLetters(0)
    w = Worker(nc, FakeStore(), DownModel("unit-window"), dlq, options)  # type: ignore[arg-type]
    record = RecordedEvent(envelope=None, event=None, stream_seq=7, recorded_at_ns=0)  # type: ignore[arg-type]
    judging = asyncio.create_task(w._judge([record]))
    try:
        await asyncio.sleep(0.2)
        assert not judging.done()
        assert w.refusing
        outage = w.store_outage
        assert outage is not None, "a refusing start window was not named"
        assert "unit-window v1: valkey refuses writes" in outage, outage
        assert "Connection refused" in outage, outage
    finally:
        w.stop()
        await asyncio.wait_for(judging, 5)
    assert w.store_outage is None and not w.refusing  # stopped: no longer judging


class _FullSnapshotStream:
    settings = SnapshotSettings(stream="SNAPS_FULL")


async def test_a_full_snapshot_stream_is_named_with_its_way_out() -> None:
    """The snapshotter's outage said `snapshot store: JsApiError('JetStream error
    503/10023: insufficient resources')`: no stream, no remedy. It names both now."""
    model: Any = SnapshotModel.__new__(SnapshotModel)
    model.snapshots = _FullSnapshotStream()

    async def full(events: Any) -> Any:
        raise jsapi.JsApiError(503, 10023, "insufficient resources")

    model._apply = full
    with pytest.raises(TransientError) as refused:
        await SnapshotModel.apply(model, [])
    said = str(refused.value)
    assert said.startswith("snapshot store: NATS JetStream refused the write to stream SNAPS_FULL")
    assert "insufficient storage" in said and "To recover: free space" in said, said
