"""The observer's events counter through an outage met by callers with short deadlines:
the call is bounded by the caller's deadline, as the publisher's commands are, and what
was not stored in it is counted ``unavailable``. It ran on until grpc cancelled it at the
deadline and counted the events ``cancelled`` (the client went away, left out of error
ratios): a NATS outage showed no error to JetsourceObserverErrors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import REGISTRY

from jetsource.core.grpcserver import answer_within
from jetsource.observer.server import ObserverService


def count(outcome: str) -> float:
    return REGISTRY.get_sample_value("jetsource_observer_events_total", {"outcome": outcome}) or 0.0


class HangingRecorder:
    """An append that waits for NATS to come back (the store's request timeout)."""

    async def record(self, events: Any, at: str, checked: Any = None, settled: Any = None) -> Any:
        await asyncio.sleep(30)


class Health:
    writable = True

    async def mark(self, ok: bool, why: str = "") -> None:
        self.writable = ok


class Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


async def test_a_call_past_its_deadline_counts_unavailable_not_cancelled() -> None:
    service = ObserverService(HangingRecorder(), Health(), 100)  # type: ignore[arg-type]
    before = count("unavailable"), count("cancelled")
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await service._record("Record", [object()], "event", context=Context(0.2))  # type: ignore[list-item]
    assert asyncio.get_running_loop().time() - started < 2
    assert count("unavailable") == before[0] + 1
    assert count("cancelled") == before[1]


async def test_no_deadline_no_bound() -> None:
    service = ObserverService(HangingRecorder(), Health(), 100)  # type: ignore[arg-type]
    task = asyncio.create_task(
        service._record("Record", [object()], "event", context=Context(None))  # type: ignore[list-item]
    )
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_answer_within_keeps_a_tenth_of_the_deadline_at_most_a_tenth_of_a_second() -> None:
    assert answer_within(None) is None
    assert answer_within(None, 10.0) == 10.0
    assert answer_within(3.0) == pytest.approx(2.9)
    assert answer_within(0.5) == pytest.approx(0.45)
    assert answer_within(0.0) == 0.0
    assert answer_within(-1.0) == 0.0


class HangingHandler:
    async def execute(self, context_id: str, command: Any, options: Any) -> Any:
        await asyncio.sleep(30)


class CommandContext(Context):
    def peer(self) -> str:
        return "unit"

    def invocation_metadata(self) -> tuple[()]:
        return ()


async def test_a_command_past_its_deadline_answers_before_it_and_counts_deadline() -> None:
    """The publisher worked until the deadline itself: grpc's cancel then won the race
    about one call in five, a command never counted."""
    from jetsource._gen.context.v1 import commands_pb2 as cpb
    from jetsource.domains.context.command_service import ContextCommandService

    service = ContextCommandService(HangingHandler())  # type: ignore[arg-type]
    labels = {"command": "CreateContext", "outcome": "deadline"}
    before = REGISTRY.get_sample_value("jetsource_publisher_commands_total", labels) or 0.0
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await service.CreateContext(
            cpb.CreateContextRequest(
                context_id="story-1",
                title="t",
                options=cpb.CommandOptions(idempotency_key="k-1"),
            ),
            CommandContext(0.5),
        )
    assert asyncio.get_running_loop().time() - started < 0.48  # before the deadline
    assert REGISTRY.get_sample_value("jetsource_publisher_commands_total", labels) == before + 1


@pytest.mark.parametrize(
    "service",
    [
        "jetsource.domains.context.query_service.ContextQueryService",
        "jetsource.processquery.service.ProcessQueryService",
    ],
)
def test_the_read_services_answer_before_the_deadline_too(service: str) -> None:
    """The query and process query services bounded a read by the deadline itself: a
    read past it was counted ``cancelled`` (left out of error ratios) when grpc's cancel
    came first."""
    import importlib

    module, name = service.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    svc = object.__new__(cls)
    svc.o = type("O", (), {"default_deadline_s": 10.0})()
    assert svc._budget(Context(3.0)) == pytest.approx(2.9)
    assert svc._budget(Context(None)) == 10.0
