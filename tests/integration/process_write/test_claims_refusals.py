"""The claims bucket refusing a write (at its limits with discard new) or gone (its
stream deleted) is answered UNAVAILABLE naming the bucket, not INTERNAL (a refusal)
or an inbox's name (a deleted bucket); once the bucket takes writes again the same
event ids are recorded once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import nats
import pytest
from nats.js.api import DiscardPolicy

from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.observer.server import Observer, build
from tests.infra import Server
from tests.integration.process_write.conftest import observer_settings
from tests.integration.process_write.helpers import event

pytestmark = pytest.mark.integration


@pytest.fixture
async def own_bucket(nats_server: Server, unique: str) -> AsyncIterator[tuple[Observer, str]]:
    bucket = f"CLAIMS_{unique}"
    o = await build(observer_settings(nats_server, claims_bucket=bucket))
    yield o, bucket
    await o.stop(0)
    nc = await nats.connect(nats_server.url)
    with contextlib.suppress(Exception):  # deleted by the test already
        await nc.jetstream().delete_key_value(bucket)
    await nc.close()


async def _record(stub: pb_grpc.ObserverServiceStub, pid: str, *ids: str) -> list[tuple[int, bool]]:
    if len(ids) == 1:
        r = await stub.Record(pb.RecordRequest(event=event(pid, event_id=ids[0])), timeout=10)
        return [(r.position.global_seq, r.position.duplicate)]
    b = await stub.RecordBatch(
        pb.RecordBatchRequest(events=[event(pid, event_id=i) for i in ids]), timeout=10
    )
    return [(p.global_seq, p.duplicate) for p in b.positions]


async def test_a_full_claims_bucket_is_unavailable_named_and_nothing_doubles(
    nats_server: Server, own_bucket: tuple[Observer, str], unique: str
) -> None:
    observer, bucket = own_bucket
    pid = f"claims-full-{unique}"
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}") as channel:
            stub = pb_grpc.ObserverServiceStub(channel)
            await _record(stub, pid, "e0")
            info = await js.stream_info(f"KV_{bucket}")
            cfg = info.config
            cfg.max_msgs, cfg.discard = info.state.messages, DiscardPolicy.NEW
            await js.update_stream(cfg)
            for ids in (("e1",), ("b1", "b2", "b3")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _record(stub, pid, *ids)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                assert f"KV_{bucket}" in (err.value.details() or "")
                assert "10077" in (err.value.details() or "")

            cfg.max_msgs = -1
            await js.update_stream(cfg)
            first = await _record(stub, pid, "e1") + await _record(stub, pid, "b1", "b2", "b3")
            again = await _record(stub, pid, "e1") + await _record(stub, pid, "b1", "b2", "b3")
            assert not any(dup for _, dup in first)
            assert all(dup for _, dup in again)
            assert [s for s, _ in again] == [s for s, _ in first]
            history = await observer.store.read_aggregate(pid)
            assert [e.envelope.event_id for e in history] == ["e0", "e1", "b1", "b2", "b3"]
    finally:
        await nc.close()


async def test_a_deleted_claims_bucket_is_unavailable_naming_it(
    nats_server: Server, own_bucket: tuple[Observer, str], unique: str
) -> None:
    observer, bucket = own_bucket
    pid = f"claims-gone-{unique}"
    nc = await nats.connect(nats_server.url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}") as channel:
            stub = pb_grpc.ObserverServiceStub(channel)
            await _record(stub, pid, "e0")
            await nc.jetstream().delete_key_value(bucket)
            for ids in (("e1",), ("b1", "b2")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _record(stub, pid, *ids)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                details = err.value.details() or ""
                assert f"claims bucket {bucket} is gone" in details, details
            assert len(await observer.store.read_aggregate(pid)) == 1
    finally:
        await nc.close()
