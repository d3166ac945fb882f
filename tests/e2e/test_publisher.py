"""The publisher through gRPC only, against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource._gen.context.v1 import events_pb2
from jetsource.client import ContextClient, error_details
from jetsource.core.settings import NatsSettings
from jetsource.devstack.servers import NatsServer, free_port, stop_pid
from jetsource.publisher.server import Publisher, build
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server

pytestmark = pytest.mark.e2e
Code = grpc.StatusCode


@pytest.fixture
def publisher_settings(nats_server: Server, unique: str) -> PublisherSettings:
    return PublisherSettings(
        nats=NatsSettings(url=nats_server.url),
        eventstore=isolated_settings(unique),
        publisher=PublisherOptions(grpc_port=0, metrics_port=0),
    )


@pytest.fixture
async def start_publisher(
    publisher_settings: PublisherSettings,
) -> AsyncIterator[Callable[[], Any]]:
    running: list[Publisher] = []

    async def start() -> Publisher:
        publisher = await build(publisher_settings)
        running.append(publisher)
        return publisher

    yield start
    for p in running:
        await p.stop(0)


@pytest.fixture
async def publisher(start_publisher: Callable[[], Any]) -> Publisher:
    publisher: Publisher = await start_publisher()
    return publisher


@pytest.fixture
async def client(publisher: Publisher) -> AsyncIterator[ContextClient]:
    async with ContextClient(f"127.0.0.1:{publisher.port}", actor="tester") as c:
        yield c


async def versions(publisher: Publisher, context_id: str) -> int:
    return await publisher.store.last_version(context_id)


async def test_health_and_a_full_story(publisher: Publisher, client: ContextClient) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    r = await client.create_context("story", "Checkout", tags=["payments"])
    assert (r.version, r.duplicate, len(r.event_ids)) == (1, False, 1)
    await client.add_decision("story", "d1", "Use NATS")
    await client.add_decision("story", "d2", "Use JetStream", rationale="durable")
    await client.revise_decision("story", "d1", body="core only")
    await client.supersede_decision("story", "d1", "d2", reason="persistence")
    await client.add_subtask("story", "s1", "Publisher", assignee="ana")
    await client.add_subtask("story", "s2", "Projector")
    await client.link_dependency("story", "s2", "s1")
    await client.update_subtask("story", "s1", status="in_progress", progress=50)
    await client.update_subtask("story", "s1", status="done", progress=100)
    last = await client.close_context("story", reason="shipped", expected_version=10)
    assert last.version == 11 and last.stream_sequences[0] > r.stream_sequences[0]

    events = await publisher.store.read_aggregate("story")
    assert [e.event_type for e in events][-1] == "ContextClosed"
    assert all(dict(e.envelope.metadata) == {"actor": "tester"} for e in events)


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (lambda c: c.add_decision("story", "d1", "again"), Code.FAILED_PRECONDITION, "'d1'"),
        (lambda c: c.add_decision("ghost", "d1", "x"), Code.FAILED_PRECONDITION, "does not exist"),
        (lambda c: c.create_context("story", "twice"), Code.FAILED_PRECONDITION, "already exists"),
        (lambda c: c.link_dependency("story", "s1", "s1"), Code.FAILED_PRECONDITION, "itself"),
        (
            lambda c: c.update_subtask("story", "s1", status="done"),
            Code.FAILED_PRECONDITION,
            "todo to done",
        ),
        (
            lambda c: c.add_decision("story", "d9", "x", expected_version=1),
            Code.ABORTED,
            "at version 4",
        ),
        (lambda c: c.add_decision("bad.id", "d9", "x"), Code.INVALID_ARGUMENT, "context_id"),
        (lambda c: c.add_decision("story", "d 9", "x"), Code.INVALID_ARGUMENT, "decision_id"),
        (lambda c: c.add_decision("story", "d9", ""), Code.INVALID_ARGUMENT, "title"),
        (lambda c: c.add_decision("story", "d9", "x" * 201), Code.INVALID_ARGUMENT, "title"),
        (
            lambda c: c.add_decision("story", "d9", "x", idempotency_key=""),
            Code.INVALID_ARGUMENT,
            "idempotency_key",
        ),
        (
            lambda c: c.update_subtask("story", "s1", progress=101),
            Code.INVALID_ARGUMENT,
            "progress",
        ),
    ],
)
async def test_violations_return_the_right_status_and_append_nothing(
    publisher: Publisher, client: ContextClient, call: Any, code: grpc.StatusCode, message: str
) -> None:
    await client.create_context("story", "s")
    await client.add_decision("story", "d1", "one")
    await client.add_subtask("story", "s1", "task")
    await client.add_decision("story", "d2", "two")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(client)
    assert err.value.code() == code, err.value.details()
    assert message in (err.value.details() or "")
    assert await versions(publisher, "story") == 4


async def test_same_idempotency_key_returns_the_original(
    publisher: Publisher, client: ContextClient, start_publisher: Callable[[], Any]
) -> None:
    await client.create_context("idem", "s", idempotency_key="k-create")
    first = await client.add_decision("idem", "d1", "x", idempotency_key="k-1")
    again = await client.add_decision("idem", "d1", "x", idempotency_key="k-1")
    assert (again.version, list(again.event_ids), again.duplicate) == (
        first.version,
        list(first.event_ids),
        True,
    )
    # concurrently: ten sends of one new command append it once
    results = await asyncio.gather(
        *(client.add_subtask("idem", "s1", "t", idempotency_key="k-2") for _ in range(10))
    )
    assert len({tuple(r.event_ids) for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    # after a restart: a new publisher process knows the key from the stream
    await publisher.stop(1)
    restarted: Publisher = await start_publisher()
    async with ContextClient(f"127.0.0.1:{restarted.port}") as fresh:
        after = await fresh.add_decision("idem", "d1", "x", idempotency_key="k-1")
    assert list(after.event_ids) == list(first.event_ids) and after.duplicate
    assert await versions(restarted, "idem") == 3


async def test_twenty_concurrent_clients_on_one_context(
    publisher: Publisher, start_publisher: Callable[[], Any]
) -> None:
    second: Publisher = await start_publisher()  # two processes' worth of publishers
    targets = [f"127.0.0.1:{publisher.port}", f"127.0.0.1:{second.port}"]
    async with ContextClient(targets[0]) as c:
        await c.create_context("busy", "hot story")
    ok, failed = 0, 0

    async def worker(n: int) -> None:
        nonlocal ok, failed
        async with ContextClient(targets[n % 2]) as c:
            for i in range(5):
                try:
                    await c.add_decision("busy", f"d{n}-{i}", "t")
                    ok += 1
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == Code.ABORTED, exc.details()
                    failed += 1

    retries_before = REGISTRY.get_sample_value("jetsource_publisher_retries_total") or 0.0
    await asyncio.gather(*(worker(n) for n in range(20)))
    assert ok + failed == 100
    # two publishers on one context do conflict, and the losers retry
    assert (REGISTRY.get_sample_value("jetsource_publisher_retries_total") or 0) > retries_before
    assert await versions(publisher, "busy") == 1 + ok
    assert ok >= 90, f"only {ok} of 100 commands got through"


async def test_fuzzed_requests_never_yield_internal(publisher: Publisher) -> None:
    rng = random.Random(7)
    alphabet = string.printable + "é.*> \x00"

    def junk(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        stub = pb_grpc.ContextCommandServiceStub(channel)
        await stub.CreateContext(
            pb.CreateContextRequest(
                context_id="fuzz", title="t", options=pb.CommandOptions(idempotency_key="c")
            )
        )
        codes: set[grpc.StatusCode] = set()
        for i in range(300):
            options = pb.CommandOptions(idempotency_key=junk(3) or "", actor=junk(200))
            if rng.random() < 0.3:
                options.expected_version = rng.randint(0, 2**63)
            context_id = rng.choice(["fuzz", junk(10), "x" * 200, ""])
            big = "y" * rng.choice([0, 10, 300, 20_000])
            requests = [
                (
                    "AddDecision",
                    pb.AddDecisionRequest(
                        context_id=context_id,
                        options=options,
                        decision_id=junk(70),
                        title=junk(250) + big,
                        affects=[junk(5)],
                    ),
                ),
                (
                    "UpdateSubtask",
                    pb.UpdateSubtaskRequest(
                        context_id=context_id,
                        options=options,
                        subtask_id=junk(5),
                        status=events_pb2.SubtaskStatus.ValueType(rng.randint(-3, 9)),
                        progress=rng.randint(0, 2**32 - 1),
                    ),
                ),
                (
                    "LinkDependency",
                    pb.LinkDependencyRequest(
                        context_id=context_id, options=options, from_id=junk(5), to_id=junk(5)
                    ),
                ),
                (
                    "AddSubtask",
                    pb.AddSubtaskRequest(
                        context_id=context_id,
                        options=options,
                        subtask_id=f"s{i}",
                        title=junk(20),
                        description=big * 2,
                    ),
                ),
            ]
            name, request = rng.choice(requests)
            try:
                await getattr(stub, name)(request, timeout=5)
            except grpc.aio.AioRpcError as exc:
                codes.add(exc.code())
                assert exc.code() != Code.INTERNAL, (name, exc.details())
                assert exc.code() != Code.UNKNOWN, (name, exc.details())
        assert Code.INVALID_ARGUMENT in codes
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_nats_down_is_unavailable(tmp_path: Path, unique: str) -> None:
    nats_proc = NatsServer(tmp_path, port=free_port(), monitor_port=free_port())
    proc = nats_proc.start()
    nats_proc.wait_ready(proc, 30)
    settings = PublisherSettings(
        nats=NatsSettings(url=nats_proc.address()),
        eventstore=isolated_settings(unique, request_timeout_s=0.2, retry_attempts=2),
        publisher=PublisherOptions(grpc_port=0, metrics_port=0),
    )
    publisher = await build(settings)
    try:
        async with ContextClient(f"127.0.0.1:{publisher.port}") as client:
            await client.create_context("down", "t")
            stop_pid(proc.pid)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.add_decision("down", "d1", "x")
            assert err.value.code() == Code.UNAVAILABLE
            assert "NATS" in (err.value.details() or "")
    finally:
        with contextlib.suppress(Exception):
            await publisher.stop(0)


async def test_deadline_is_respected(client: ContextClient, publisher: Publisher) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        stub = pb_grpc.ContextCommandServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateContext(
                pb.CreateContextRequest(
                    context_id="slow", title="t", options=pb.CommandOptions(idempotency_key="k")
                ),
                timeout=0.0001,
            )
        assert err.value.code() == Code.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda c: c.add_decision("story", "d9", "x", correlation_id="c\r\nX-Evil: 1"),
            "options.correlation_id",
        ),
        (lambda c: c.add_decision("story", "d9", "a\x1b[31mred"), "title"),
        (lambda c: c.add_decision("story", "d9", "x", body="wipe\x1b[2J"), "body"),
        (lambda c: c.add_subtask("story", "s9", "t", assignee="ana\x00"), "assignee"),
        (lambda c: c.create_context("other", "t", tags=["ok", "new\nline"]), "tags"),
        (lambda c: c.revise_decision("story", "d1", title="   "), "title"),
        (lambda c: c.revise_decision("story", "d1", title="\x00"), "title"),
    ],
)
async def test_control_characters_and_blank_revised_titles_are_refused_naming_the_field(
    publisher: Publisher, client: ContextClient, call: Any, field: str
) -> None:
    await client.create_context("story", "s")
    await client.add_decision("story", "d1", "one", body="two\nlines\r\nand\ta tab")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(client)
    assert err.value.code() == Code.INVALID_ARGUMENT, err.value.details()
    assert (err.value.details() or "").startswith(field)
    assert field in error_details(err.value).fields
    assert await versions(publisher, "story") == 2
    assert await versions(publisher, "other") == 0


async def test_a_story_is_capped_by_the_max_context_bytes_setting(
    publisher_settings: PublisherSettings,
) -> None:
    small = publisher_settings.model_copy(
        update={"publisher": PublisherOptions(grpc_port=0, metrics_port=0, max_context_bytes=9000)}
    )
    capped = await build(small)
    try:
        async with ContextClient(f"127.0.0.1:{capped.port}") as c:
            await c.create_context("capped", "s")
            await c.add_decision("capped", "d0", "t", body="x" * 8000)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.add_decision("capped", "d1", "t", body="x" * 1000)
            assert err.value.code() == Code.FAILED_PRECONDITION
            assert "past the cap of 9,000 bytes" in (err.value.details() or "")
            details = error_details(err.value)
            assert details.reason == "CONTEXT_TOO_LARGE"
            assert details.metadata["max_context_bytes"] == "9000"
            assert 8000 < int(details.metadata["context_bytes"]) <= 9000
            assert await versions(capped, "capped") == 2
            await c.revise_decision("capped", "d0", body="short")
            assert (await c.add_decision("capped", "d1", "t", body="x" * 1000)).version == 4
    finally:
        await capped.stop(0)
