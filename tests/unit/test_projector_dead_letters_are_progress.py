"""Filing dead letters is progress: a stream busy for ``stall_after_s`` with only the
events of a parked story (each filed behind its letter, acked) never moved the worker's
progress mark, so the model read as stalled and /livez restarted the process, which
then did the same."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import Delivery
from jetsource.projection.contract import ModelSpec
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorOptions
from tests.unit.test_projector_gauges_truth import DownModel, FakeStore


def delivery(seq: int) -> Delivery:
    return Delivery(
        subject="ctx.events.parked.DecisionAdded",
        data=b"",
        headers={},
        reply=f"$JS.ACK.S.C.1.{seq}.{seq}.0.0",
        stream_seq=seq,
        delivered=1,
        time_ns=0,
        pending=0,
    )


class Letters:
    stream = "DLQ"

    def __init__(self) -> None:
        self.filed: list[int] = []

    async def pending(self, spec: ModelSpec, aggregate_id: str) -> bool:
        return True  # its letter is still there

    async def publish(self, spec: ModelSpec, aggregate_id: str, raw: Any, *args: Any) -> None:
        self.filed.append(raw.seq)

    async def count(self, spec: ModelSpec) -> int:
        return len(self.filed)


async def test_a_batch_of_dead_letters_only_is_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    async def ack(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(jsapi, "ack", ack)
    monkeypatch.setattr(jsapi, "ack_many", ack, raising=False)
    nc: Any = type("Nc", (), {"new_inbox": staticmethod(lambda: "_INBOX.unit")})()
    letters = Letters()
    options = ProjectorOptions()
    w = Worker(nc, FakeStore(), DownModel("unit-parked"), letters, options)  # type: ignore[arg-type]
    w._parked["parked"] = {4}
    w.running = True
    w._progress_at = time.monotonic() - options.stall_after_s - 1
    assert w.stalled
    await w.process([delivery(5), delivery(6)])
    assert letters.filed == [5, 6]
    assert not w.stalled
