"""The registry's ``error`` is the last ending's, as its status is: a process that
failed with an error and then completed (or was cancelled, or interrupted) showed
status ``completed`` with the failure's error still on it, where a second failure
without an error cleared it. Now every ending sets it (a failure's ``data.error``) or
clears it, in ``GetProcess``, the trees and the lists alike."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import ANY, NewEvent
from jetsource.domains.process.models import PROCESSES
from jetsource.processquery.server import build
from jetsource.projection.bootstrap import Projection
from tests.integration.process_read.ledger import apply_model
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration

# process -> its endings in order (type, error or None); the error the registry shows
CASES: dict[str, tuple[list[tuple[str, Any]], Any]] = {
    "failed-then-completed": ([("process_failed", "boom"), ("process_completed", None)], None),
    "failed-then-cancelled": ([("process_failed", "boom"), ("process_cancelled", None)], None),
    "failed-then-interrupted": (
        [("process_failed", {"a": 1}), ("process_interrupted", None)],
        None,
    ),
    "failed-then-failed-bare": ([("process_failed", "boom"), ("process_failed", None)], None),
    "completed-then-failed": ([("process_completed", None), ("process_failed", "late")], "late"),
    "failed-twice": ([("process_failed", "one"), ("process_failed", "two")], "two"),
}


async def test_the_error_shown_is_the_last_endings(ledger: Projection) -> None:
    p = ledger
    store = p.domain_store("process")
    for pid, (endings, _) in CASES.items():
        events = [
            NewEvent(ProcessEventBody(data=struct_pb2.Struct()), event_type="process_started")
        ]
        for typ, error in endings:
            body = ProcessEventBody(data=struct_pb2.Struct())
            if error is not None:
                body.data.update({"error": error})
            events.append(NewEvent(body, event_type=typ))
        await store.append(pid, events, ANY)
    await apply_model(p, PROCESSES)
    svc = await build(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
            s = q_grpc.ProcessQueryServiceStub(ch)
            listed = await s.ListProcesses(q.ListProcessesRequest(page_size=100), timeout=10)
            in_list = {i.process_id: i for i in listed.processes}
            for pid, (_, want) in CASES.items():
                got = (await s.GetProcess(q.GetProcessRequest(process_id=pid), timeout=10)).process
                for shown in (got, in_list[pid]):
                    error = (
                        json_format.MessageToDict(shown.error) if shown.HasField("error") else None
                    )
                    assert error == want, (pid, shown.status, error)
    finally:
        await svc.stop(0)
