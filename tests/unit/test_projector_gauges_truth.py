"""The projector's lag and checkpoint gauges say what the consumer holds, also through a
store outage: the lag counts the events delivered and waiting for redelivery (it stayed
0 while Valkey was away and 300 events waited), and the checkpoint is the batch's
highest sequence (a batch ending with a redelivery of an older event left it 135 below
what the model had applied)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY

from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import Delivery
from jetsource.projection.contract import Kind, ModelSpec, Outcome, TransientError
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorOptions


def gauge(name: str, model: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"model": model, "version": "1"})


def delivery(seq: int, pending: int, delivered: int = 1) -> Delivery:
    return Delivery(
        subject=f"ctx.events.story-{seq}",
        data=b"",
        headers={},
        reply=f"$JS.ACK.S.C.{delivered}.{seq}.{seq}.0.{pending}",
        stream_seq=seq,
        delivered=delivered,
        time_ns=0,
        pending=pending,
    )


@dataclass
class FakeStore:
    settings: EventStoreSettings = field(
        default_factory=lambda: EventStoreSettings(subject_prefix="ctx.events")
    )
    _replies: Any = None

    async def open(self, raw: Any) -> RecordedEvent:
        return RecordedEvent(envelope=None, event=None, stream_seq=raw.seq, recorded_at_ns=0)  # type: ignore[arg-type]

    def known_voided(self, seq: int) -> bool:
        return False


class DownModel:
    def __init__(self, name: str) -> None:
        self.spec = ModelSpec(name, 1, Kind.SNAPSHOT, "valkey", "unit")

    async def apply(self, records: Any) -> Outcome:
        raise TransientError("valkey: Connection refused")


class FakeDeadLetters:
    def __init__(self, stored: int) -> None:
        self.stored = stored

    async def count(self, spec: ModelSpec) -> int:
        return self.stored


def worker(name: str, dead_letters: int = 0) -> Worker:
    nc: Any = type("Nc", (), {"new_inbox": staticmethod(lambda: "_INBOX.unit")})()
    dlq: Any = FakeDeadLetters(dead_letters)
    return Worker(nc, FakeStore(), DownModel(name), dlq, ProjectorOptions())  # type: ignore[arg-type]


def test_checkpoint_is_the_highest_sequence_of_the_batch_not_its_last() -> None:
    w = worker("unit-ckpt")
    # new events first, then the redelivery of an older one (after a nak's backoff)
    batch = [delivery(300, 0), delivery(301, 0), delivery(174, 0, delivered=2)]
    w._account(batch, Outcome(done=[300, 301, 174], applied=3), 0, 0.01)
    assert gauge("jetsource_projector_checkpoint", "unit-ckpt") == 301
    assert w.stats.last_seq == 301


async def test_lag_counts_the_events_waiting_for_redelivery_while_the_store_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[str, str]] = []

    async def consumer_info(replies: Any, stream: str, name: str, timeout: float) -> Any:
        asked.append((stream, name))
        assert timeout <= 5.0  # the store's request timeout, not the ack wait (30 s)
        return {"num_pending": 7, "num_ack_pending": 300}

    async def nak(nc: Any, d: Delivery, delay: float) -> None:
        return None

    monkeypatch.setattr(jsapi, "consumer_info", consumer_info)
    monkeypatch.setattr(jsapi, "nak", nak)
    w = worker("unit-lag")
    w._account([delivery(9, 0)], Outcome(done=[9], applied=1), 0, 0.01)  # caught up
    assert gauge("jetsource_projector_lag", "unit-lag") == 0

    await w._process([delivery(s, 7) for s in range(10, 20)])  # the store refuses

    assert asked, "the consumer was not asked"
    assert gauge("jetsource_projector_lag", "unit-lag") == 307
    # refreshed at most once a second while batches keep failing
    await w._process([delivery(s, 7, delivered=2) for s in range(10, 20)])
    assert len(asked) == 1


async def test_lag_left_as_it_was_when_the_consumer_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def consumer_info(replies: Any, stream: str, name: str, timeout: float) -> Any:
        raise TimeoutError

    async def nak(nc: Any, d: Delivery, delay: float) -> None:
        return None

    monkeypatch.setattr(jsapi, "consumer_info", consumer_info)
    monkeypatch.setattr(jsapi, "nak", nak)
    w = worker("unit-lag-quiet")
    w._account([delivery(9, 4)], Outcome(done=[9], applied=1), 0, 0.01)
    await w._process([delivery(10, 3)])  # no exception out of the batch
    assert gauge("jetsource_projector_lag", "unit-lag-quiet") == 4


def series(name: str, model: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for m in REGISTRY.collect()
        for s in m.samples
        if s.name == name and s.labels.get("model") == model
    ]


async def test_workers_of_one_version_share_its_gauges_and_a_stopped_one_leaves_them() -> None:
    """Two partition workers of one model version in one process: the lag is their sum
    (each overwrote the other's), and when one stops (its lease moved to another
    replica) its values leave; when the last stops (the version dropped) the series go,
    instead of staying at their last values for ever."""
    one, two = worker("unit-share", dead_letters=3), worker("unit-share")
    one._account([delivery(5, 40)], Outcome(done=[5], applied=1), 0, 0.01)
    two._account([delivery(9, 2)], Outcome(done=[9], applied=1), 0, 0.01)
    await one._recount_dead_letters()
    assert gauge("jetsource_projector_lag", "unit-share") == 42
    assert gauge("jetsource_projector_checkpoint", "unit-share") == 9
    assert gauge("jetsource_projector_dead_letters_pending", "unit-share") == 3

    async def ends(until_caught_up: bool) -> None:
        return None

    one._run = ends  # type: ignore[method-assign]  # as a worker stopped by the host
    await one.run()
    assert gauge("jetsource_projector_lag", "unit-share") == 2
    assert gauge("jetsource_projector_checkpoint", "unit-share") == 9
    assert series("jetsource_projector_dead_letters_pending", "unit-share") == []

    two._run = ends  # type: ignore[method-assign]
    await two.run()
    for name in (
        "jetsource_projector_lag",
        "jetsource_projector_checkpoint",
        "jetsource_projector_stalled",
        "jetsource_projector_dead_letters_pending",
    ):
        assert series(name, "unit-share") == [], name


async def test_lag_is_exported_from_the_start_not_from_the_first_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A projector restarted behind (or idle) showed no lag series until a batch came."""
    w = worker("unit-start")

    async def nothing(*args: Any, **kwargs: Any) -> Any:
        return None

    async def ensure_consumer(from_seq: int | None = None) -> dict[str, Any]:
        return {"num_pending": 1200, "num_ack_pending": 34}

    async def no_letters(spec: ModelSpec) -> list[Any]:
        return []

    monkeypatch.setattr(w.model, "setup", nothing, raising=False)
    monkeypatch.setattr(w, "_check_store", nothing)
    monkeypatch.setattr(w, "ensure_consumer", ensure_consumer)
    monkeypatch.setattr(w, "_judge_window", nothing)
    monkeypatch.setattr(w.dlq, "list", no_letters, raising=False)
    monkeypatch.setattr("jetsource.projection.runtime.discarded_sequences", nothing)
    await w.start()
    assert gauge("jetsource_projector_lag", "unit-start") == 1234


class UpModel:
    def __init__(self, name: str) -> None:
        self.spec = ModelSpec(name, 1, Kind.SNAPSHOT, "valkey", "unit")

    async def apply(self, records: Any) -> Outcome:
        return Outcome(done=[r.stream_seq for r in records], applied=len(records))


async def test_events_judged_from_the_in_flight_window_count_as_applied() -> None:
    """outcome="applied" is what the status calls applied: the in-flight window's
    events were counted "filled" only, so the counter fell behind the status."""
    nc: Any = type("Nc", (), {"new_inbox": staticmethod(lambda: "_INBOX.unit")})()
    w = Worker(nc, FakeStore(), UpModel("unit-window"), None, ProjectorOptions())  # type: ignore[arg-type]
    records = [
        RecordedEvent(envelope=None, event=None, stream_seq=s, recorded_at_ns=0)  # type: ignore[arg-type]
        for s in (4, 5, 6)
    ]
    await w._judge(records)
    labels = {"model": "unit-window", "version": "1"}
    applied = REGISTRY.get_sample_value(
        "jetsource_projector_events_total", {**labels, "outcome": "applied"}
    )
    assert applied == w.stats.applied == 3
