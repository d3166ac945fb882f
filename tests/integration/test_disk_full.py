"""A full store (JetStream's ``max_file_store`` standing in for a full disk): appends are
refused with a named error and store nothing, the publisher's health is NOT_SERVING while
it cannot write and SERVING again on its own once space is freed (without restarting
nats-server), and the retried command is then accepted exactly once (#22 item 4)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jetsource.client import ContextClient
from jetsource.core.settings import NatsSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.devstack.stack import LocalStack
from jetsource.eventstore.refusals import JetStreamRefusedError, classify, refused
from jetsource.publisher.server import Publisher, build
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server, _embedded

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_refusal_codes_are_named() -> None:
    for code, word in [
        (10023, "insufficient storage"),
        (10047, "insufficient storage"),
        (10002, "account"),
        (10076, "not enabled"),
        (10039, "not enabled for this account"),
        (10109, "sealed"),
        (10077, "could not store"),
    ]:
        error = refused(code, "desc", "S")
        assert isinstance(error, JetStreamRefusedError), code
        assert word in str(error) and f"err_code {code}" in str(error), str(error)
        assert "NATS JetStream refused the write to stream S" in str(error)
    for not_a_refusal in (10071, 10054, 10059, 0):  # wrong sequence, too large, no stream
        assert classify(not_a_refusal) is None


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[Server]:
    server = _embedded(
        NatsServer(
            tmp_path / "nats", port=free_port(), monitor_port=free_port(), max_file_store="512KB"
        )
    )
    yield server
    server.stop()


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        return int(reply.status)


async def _wait_health(port: int, wanted: int, within: float) -> None:
    seen = None
    for _ in range(int(within / 0.1)):
        seen = await _health(port)
        if seen == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health stayed {seen}, wanted {wanted} within {within}s")


async def _fill(url: str) -> int:
    """Publish to a FILLER stream until the server refuses: returns the err_code."""
    nc = await nats.connect(url)
    try:
        await nc.request(
            "$JS.API.STREAM.CREATE.FILLER",
            json.dumps({"name": "FILLER", "subjects": ["filler.>"], "storage": "file"}).encode(),
            timeout=5,
        )
        for _ in range(10_000):
            reply = await nc.request("filler.x", os.urandom(4096), timeout=5)
            body = json.loads(reply.data)
            if "error" in body:
                return int(body["error"]["err_code"])
        raise AssertionError("the store never filled up")
    finally:
        await nc.close()


async def _api(url: str, subject: str, body: dict[str, object] | None = None) -> dict[str, object]:
    nc = await nats.connect(url)
    try:
        reply = await nc.request(f"$JS.API.{subject}", json.dumps(body or {}).encode(), timeout=5)
        result: dict[str, object] = json.loads(reply.data)
        return result
    finally:
        await nc.close()


async def test_full_store_refused_named_unhealthy_then_recovers(
    small_nats: Server, unique: str
) -> None:
    settings = PublisherSettings(
        nats=NatsSettings(url=small_nats.url),
        eventstore=isolated_settings(unique, request_timeout_s=2.0, retry_attempts=2),
        publisher=PublisherOptions(grpc_port=0, metrics_port=0),
    )
    publisher: Publisher = await build(settings)
    story = f"full-{unique}"
    try:
        async with ContextClient(f"127.0.0.1:{publisher.port}", actor="tester") as client:
            await client.create_context(story, "before the disk filled")
            assert await _health(publisher.port) == SERVING

            assert await _fill(small_nats.url) == 10023

            # While full: a named refusal, nothing stored, health NOT_SERVING.
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await client.add_decision(story, "d1", "kept", idempotency_key="k-d1")
                assert err.value.code() == Code.UNAVAILABLE, err.value.details()
                details = err.value.details() or ""
                assert "NATS JetStream refused the write" in details, details
                assert "insufficient storage" in details and "err_code 10023" in details
                assert "nothing was stored" in details
            await _wait_health(publisher.port, NOT_SERVING, 3)
            assert await publisher.store.last_version(story) == 1

            # `jetsource infra status` names the condition for a local NATS.
            assert isinstance(small_nats.embedded, NatsServer)
            condition = small_nats.embedded.jetstream_condition()
            assert condition.at_limit and not condition.writable
            healthy, detail = LocalStack._nats_detail(small_nats.embedded)
            assert not healthy and "storage limit reached" in detail, detail
            assert "of 512.0 KB limit" in detail, detail

            # Space freed inside JetStream (the filler deleted): no restart, health comes
            # back on its own, the retried command is stored once.
            deleted = await _api(small_nats.url, "STREAM.DELETE.FILLER")
            assert deleted.get("success") is True, deleted
            await _wait_health(publisher.port, SERVING, 5)
            done = await client.add_decision(story, "d1", "kept", idempotency_key="k-d1")
            assert done.version == 2
            again = await client.add_decision(story, "d1", "kept", idempotency_key="k-d1")
            assert again.version == 2
            events = await publisher.store.read_aggregate(story)
            assert [e.event_type for e in events] == ["ContextCreated", "DecisionAdded"]
            assert LocalStack._nats_detail(small_nats.embedded)[0]

            # A sealed stream is named as well, and the health follows it.
            info = await _api(small_nats.url, f"STREAM.INFO.{settings.eventstore.stream}")
            config = dict(info["config"])  # type: ignore[call-overload]
            config["sealed"] = True
            sealed = await _api(
                small_nats.url, f"STREAM.UPDATE.{settings.eventstore.stream}", config
            )
            assert "error" not in sealed, sealed
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.add_subtask(story, "s1", "after the seal")
            assert err.value.code() == Code.UNAVAILABLE
            assert "sealed" in (err.value.details() or "")
            assert "err_code 10109" in (err.value.details() or "")
            await _wait_health(publisher.port, NOT_SERVING, 3)
            assert await publisher.store.last_version(story) == 2
    finally:
        with contextlib.suppress(Exception):
            await publisher.stop(0)
