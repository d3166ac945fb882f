"""The process query service checks a request's arguments before it asks for a model:
``min_process_seq`` out of range was checked after the active version of the registry
or timeline was looked up, so while that lookup failed (NATS KV away) the caller got
UNAVAILABLE for a request no state of the models makes valid. INVALID_ARGUMENT naming
the field now, whatever the models' state; a valid request still answers UNAVAILABLE.
Against real servers: nats-server (a connection that is then closed) and Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import nats
import pytest
from valkey.asyncio import Valkey

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource.core.grpcserver import RpcError
from jetsource.core.settings import JetsourceSettings
from jetsource.processquery.service import MAX_SEQ, ProcessQueryService
from jetsource.processquery.settings import ProcessQueryOptions
from jetsource.projection.control import Control

pytestmark = pytest.mark.integration


class Deadline:
    def time_remaining(self) -> float:
        return 5.0


@pytest.fixture
async def away(settings: JetsourceSettings, unique: str) -> AsyncIterator[ProcessQueryService]:
    """A service whose read models' active versions cannot be looked up: the control
    bucket's NATS connection is closed."""
    nc = await nats.connect(settings.nats_url())
    control = Control(nc, f"control-{unique}")
    await nc.close()
    redis = Valkey.from_url(settings.valkey_url())
    options = ProcessQueryOptions(grpc_port=0, metrics_port=0, control_max_stale_s=0.1)
    yield ProcessQueryService(redis, control, f"pq-{unique}", options)
    await redis.aclose()


CALLS: list[tuple[str, Callable[[int], Any]]] = [
    ("GetProcess", lambda seq: q.GetProcessRequest(process_id="p", min_process_seq=seq)),
    ("GetProcessTree", lambda seq: q.GetProcessTreeRequest(process_id="p", min_process_seq=seq)),
    (
        "GetProcessTimeline",
        lambda seq: q.GetProcessTimelineRequest(process_id="p", min_process_seq=seq),
    ),
]


@pytest.mark.parametrize(("method", "request_of"), CALLS)
async def test_an_out_of_range_min_process_seq_is_invalid_while_the_models_are_away(
    away: ProcessQueryService, method: str, request_of: Callable[[int], Any]
) -> None:
    call: Callable[[Any, Any], Awaitable[Any]] = getattr(away, method)
    with pytest.raises(RpcError) as bad:
        await call(request_of(MAX_SEQ + 1), Deadline())
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT, bad.value
    assert "min_process_seq" in str(bad.value), bad.value
    with pytest.raises(RpcError) as valid:  # the models are away indeed
        await call(request_of(1), Deadline())
    assert valid.value.code == grpc.StatusCode.UNAVAILABLE, valid.value


BAD_STATUS: Any = 99  # no ProcessStatus

MALFORMED: list[tuple[str, Any, str]] = [
    ("GetProcess", q.GetProcessRequest(process_id=""), "process_id"),
    ("GetProcessTree", q.GetProcessTreeRequest(process_id="p", statuses=[BAD_STATUS]), "statuses"),
    ("ListProcesses", q.ListProcessesRequest(page_size=10**9), "page_size"),
    ("ListProcesses", q.ListProcessesRequest(page_token="forged"), "page_token"),
    ("GetProcessTimeline", q.GetProcessTimelineRequest(process_id="p", page_token="x"), "page"),
    ("ListEvents", q.ListEventsRequest(from_global_seq=MAX_SEQ + 1), "from_global_seq"),
    ("WatchProcess", q.WatchProcessRequest(process_id="p\n"), "process_id"),
    ("WatchSession", q.WatchSessionRequest(session_id="s", after_seq=-1), "after_seq"),
]


@pytest.mark.parametrize(("method", "message", "field"), MALFORMED)
async def test_every_read_refuses_a_bad_argument_while_the_models_are_away(
    away: ProcessQueryService, method: str, message: Any, field: str
) -> None:
    with pytest.raises(RpcError) as bad:
        answer = getattr(away, method)(message, Deadline())
        if hasattr(answer, "__aiter__"):
            async for _ in answer:
                pass
        else:
            await answer
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT, bad.value
    assert field in str(bad.value), bad.value
