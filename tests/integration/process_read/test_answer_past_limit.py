"""A process whose answer is past the gRPC message limit (grpc.max_message_bytes; one
process may hold 64 attributes of 4 KiB, and a page or tree ends at its byte budget
but never cuts an item): GetProcess, and a page holding it, were answered
RESOURCE_EXHAUSTED "Sent message larger than max", naming neither the call nor the
setting (a code clients retry). Now FAILED_PRECONDITION, reason ANSWER_TOO_LARGE,
naming the call, the size, the limit and its setting (and the paging field of a paged
call). Built cheaply: the service's message limit lowered to 2 KiB."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import ANY, NewEvent
from jetsource.domains.process.models import PROCESSES
from jetsource.processquery.server import build
from jetsource.projection.bootstrap import Projection
from tests.calls import answer_too_large
from tests.integration.process_read.ledger import apply_model
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration
LIMIT = 2048


async def test_a_process_past_the_message_limit_is_refused_naming_call_size_and_limit(
    ledger: Projection,
) -> None:
    p = ledger
    for pid, attrs in (("small", {"a": "v"}), ("wide", {f"a{j}": "v" * 1000 for j in range(3)})):
        body = ProcessEventBody(data=struct_pb2.Struct(), attributes=attrs)
        body.data.update({"kind": "job"})
        news = [NewEvent(body, event_type="process_started")]
        await p.domain_store("process").append(pid, news, ANY)
    await apply_model(p, PROCESSES)
    settings = process_query_settings(p.settings)
    settings.grpc = settings.grpc.model_copy(update={"max_message_bytes": LIMIT})
    service = await build(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            reads = q_grpc.ProcessQueryServiceStub(channel)
            got = await reads.GetProcess(q.GetProcessRequest(process_id="small"), timeout=10)
            assert got.process.process_id == "small"
            for name, call, hint in (
                ("GetProcess", reads.GetProcess(q.GetProcessRequest(process_id="wide")), ""),
                ("ListProcesses", reads.ListProcesses(q.ListProcessesRequest()), "page_size"),
            ):
                details = await answer_too_large(call, name, LIMIT)
                # GetProcess has no page_size: the hint is left out, not a useless one
                assert ("page_size" in details) == (hint == "page_size"), details
    finally:
        await service.stop(0)
