"""A call the client cancels is counted ``cancelled``, not ``error``: a cancellation
(the client gave up or its deadline passed) is no fault of the process query service,
and the error-ratio alert and dashboard must not count it. The cancellation still
reaches the call (it is re-raised). The service runs on the session's NATS and Valkey;
its registry read is made to hang so the client can cancel mid-call."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource.core.settings import JetsourceSettings
from jetsource.processquery.server import build
from jetsource.processquery.service import ProcessQueryService
from tests.projector_fixtures import process_query_settings, projector_settings

pytestmark = pytest.mark.integration


def _sample(outcome: str) -> float:
    labels = {"method": "GetProcess", "outcome": outcome}
    return REGISTRY.get_sample_value("jetsource_process_query_requests_total", labels) or 0.0


async def test_a_cancelled_call_is_counted_cancelled_not_error(
    settings: JetsourceSettings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = await build(process_query_settings(projector_settings(settings, unique)))
    entered = asyncio.Event()
    ended: list[BaseException] = []

    async def hang(self: ProcessQueryService) -> None:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except BaseException as exc:
            ended.append(exc)
            raise

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            reads = q_grpc.ProcessQueryServiceStub(channel)
            # Answers as usual first (a NOT_FOUND is counted not_found).
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await reads.GetProcess(q.GetProcessRequest(process_id="nobody"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            monkeypatch.setattr(ProcessQueryService, "registry", hang)
            cancelled, errors = _sample("cancelled"), _sample("error")
            call = reads.GetProcess(q.GetProcessRequest(process_id="nobody"), timeout=30)
            await asyncio.wait_for(entered.wait(), 10)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

            for _ in range(200):  # the server side ends just after the client's
                if _sample("cancelled") != cancelled:
                    break
                await asyncio.sleep(0.05)
            assert _sample("cancelled") == cancelled + 1
            assert _sample("error") == errors
            assert [type(e) for e in ended] == [asyncio.CancelledError], "re-raised"
    finally:
        await query.stop(0)
