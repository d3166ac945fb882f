"""Hostile input to every ProcessQueryService RPC, through the real stack (observer ->
projector -> query service, test_process_query.py's fixture): bad ids, page sizes,
forged, garbled and other-RPC page tokens, bad timestamps and windows, sequences
reversed or past int64, bad watch fields. Each gets the status the contract names
(INVALID_ARGUMENT naming the field, NOT_FOUND for an unknown process), never UNKNOWN
or INTERNAL."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource._gen.process.v1 import query_pb2 as q
from tests.e2e import test_process_query
from tests.e2e.test_process_query import Stack, event, refused, visible

stack = test_process_query.stack  # the fixture
pytestmark = pytest.mark.e2e
Code = grpc.StatusCode
U64 = 2**64 - 1
I64 = 2**63 - 1


def ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


async def test_every_rpc_refuses_bad_input_with_the_right_code_naming_the_field(
    stack: Stack, unique: str
) -> None:
    pid = f"bq-{unique}"
    for i, kind in enumerate(["process_started", "step_done", "step_done", "step_done"]):
        await stack.record.Record(ob.RecordRequest(event=event(pid, kind, i, n=i)))
    other = f"bq2-{unique}"
    await stack.record.Record(ob.RecordRequest(event=event(other, "process_started", 0)))
    await visible(stack.reads, pid, 4)
    await visible(stack.reads, other, 1)
    r = stack.reads
    timeline = await r.GetProcessTimeline(
        q.GetProcessTimelineRequest(process_id=pid, page_size=1), timeout=5
    )
    listed = await r.ListProcesses(q.ListProcessesRequest(page_size=1), timeout=5)
    events = await r.ListEvents(q.ListEventsRequest(page_size=1), timeout=5)
    tokens = {
        "timeline": timeline.next_page_token,
        "list": listed.next_page_token,
        "events": events.next_page_token,
    }
    assert all(tokens.values()), tokens
    raw = base64.urlsafe_b64decode(tokens["events"] + "==")
    flipped = base64.urlsafe_b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode().rstrip("=")
    bad_ids = ["", "a.b", "a b", "x" * 5000, "a\x00b", "*", ">", "é"]

    cases: list[tuple[str, Any, Any, grpc.StatusCode, str]] = []

    def case(name: str, call: Any, request: Any, code: grpc.StatusCode, word: str) -> None:
        cases.append((name, call, request, code, word))

    for bad in bad_ids:
        case(
            f"GetProcess {bad[:8]!r}",
            r.GetProcess,
            q.GetProcessRequest(process_id=bad),
            Code.INVALID_ARGUMENT,
            "process_id",
        )
        case(
            f"Tree {bad[:8]!r}",
            r.GetProcessTree,
            q.GetProcessTreeRequest(process_id=bad),
            Code.INVALID_ARGUMENT,
            "process_id",
        )
        case(
            f"Timeline {bad[:8]!r}",
            r.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=bad),
            Code.INVALID_ARGUMENT,
            "process_id",
        )
        case(
            f"Watch {bad[:8]!r}",
            r.WatchProcess,
            q.WatchProcessRequest(process_id=bad),
            Code.INVALID_ARGUMENT,
            "process_id",
        )
        case(
            f"WatchSession {bad[:8]!r}",
            r.WatchSession,
            q.WatchSessionRequest(session_id=bad),
            Code.INVALID_ARGUMENT,
            "session_id",
        )
        if bad:
            case(
                f"List root {bad[:8]!r}",
                r.ListProcesses,
                q.ListProcessesRequest(root_process_id=bad),
                Code.INVALID_ARGUMENT,
                "root_process_id",
            )
            case(
                f"List parent {bad[:8]!r}",
                r.ListProcesses,
                q.ListProcessesRequest(parent_process_id=bad),
                Code.INVALID_ARGUMENT,
                "parent_process_id",
            )
    missing = f"nobody-{unique}"
    case(
        "GetProcess unknown",
        r.GetProcess,
        q.GetProcessRequest(process_id=missing),
        Code.NOT_FOUND,
        missing,
    )
    case(
        "Tree unknown",
        r.GetProcessTree,
        q.GetProcessTreeRequest(process_id=missing),
        Code.NOT_FOUND,
        missing,
    )
    case(
        "Timeline unknown",
        r.GetProcessTimeline,
        q.GetProcessTimelineRequest(process_id=missing),
        Code.NOT_FOUND,
        missing,
    )
    case(
        "Watch unknown",
        r.WatchProcess,
        q.WatchProcessRequest(process_id=missing),
        Code.NOT_FOUND,
        missing,
    )
    case(
        "WatchSession unknown",
        r.WatchSession,
        q.WatchSessionRequest(session_id=missing),
        Code.NOT_FOUND,
        missing,
    )
    case(
        "WatchSession of a process that is no session",
        r.WatchSession,
        q.WatchSessionRequest(session_id=pid),
        Code.NOT_FOUND,
        pid,
    )
    case(
        "WatchSession after_seq -1",
        r.WatchSession,
        q.WatchSessionRequest(session_id=pid, after_seq=-1),
        Code.INVALID_ARGUMENT,
        "after_seq",
    )
    case(
        "Watch after past 2^53",
        r.WatchProcess,
        q.WatchProcessRequest(process_id=pid, after_global_seq=U64),
        Code.INVALID_ARGUMENT,
        "after_global_seq",
    )

    # page sizes
    for size in (1_000_001, 2**32 - 1):
        case(
            f"List size {size}",
            r.ListProcesses,
            q.ListProcessesRequest(page_size=size),
            Code.INVALID_ARGUMENT,
            "page_size",
        )
        case(
            f"Timeline size {size}",
            r.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=pid, page_size=size),
            Code.INVALID_ARGUMENT,
            "page_size",
        )
        case(
            f"ListEvents size {size}",
            r.ListEvents,
            q.ListEventsRequest(page_size=size),
            Code.INVALID_ARGUMENT,
            "page_size",
        )

    # page tokens: garbled, forged, another RPC's, another request's
    garbled = [
        "garbage",
        "!!!!",
        "é",
        "=",
        "A" * 10_000,
        base64.urlsafe_b64encode(b"\x01" + b"\0" * 24).decode(),
        flipped,
    ]
    for t in garbled:
        case(
            f"List token {t[:8]!r}",
            r.ListProcesses,
            q.ListProcessesRequest(page_token=t),
            Code.INVALID_ARGUMENT,
            "page_token",
        )
        case(
            f"Timeline token {t[:8]!r}",
            r.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=pid, page_token=t),
            Code.INVALID_ARGUMENT,
            "page_token",
        )
        case(
            f"ListEvents token {t[:8]!r}",
            r.ListEvents,
            q.ListEventsRequest(page_token=t),
            Code.INVALID_ARGUMENT,
            "page_token",
        )
        case(
            f"List started token {t[:8]!r}",
            r.ListProcesses,
            q.ListProcessesRequest(page_token=t, started=q.TimeWindow(to=ts(2_000_000_000))),
            Code.INVALID_ARGUMENT,
            "page_token",
        )
    case(
        "List with a timeline token",
        r.ListProcesses,
        q.ListProcessesRequest(page_token=tokens["timeline"]),
        Code.INVALID_ARGUMENT,
        "page_token",
    )
    case(
        "List started with a list token",
        r.ListProcesses,
        q.ListProcessesRequest(
            page_token=tokens["list"], started=q.TimeWindow(to=ts(2_000_000_000))
        ),
        Code.INVALID_ARGUMENT,
        "page_token",
    )
    case(
        "Timeline with an events token",
        r.GetProcessTimeline,
        q.GetProcessTimelineRequest(process_id=pid, page_token=tokens["events"]),
        Code.INVALID_ARGUMENT,
        "page_token",
    )
    case(
        "Timeline token, other filter",
        r.GetProcessTimeline,
        q.GetProcessTimelineRequest(
            process_id=pid, page_token=tokens["timeline"], event_types=["step_done"]
        ),
        Code.INVALID_ARGUMENT,
        "page_token",
    )
    case(
        "Timeline token, other process",
        r.GetProcessTimeline,
        q.GetProcessTimelineRequest(process_id=missing, page_token=tokens["timeline"]),
        Code.INVALID_ARGUMENT,
        "page_token",
    )
    case(
        "ListEvents with a list token",
        r.ListEvents,
        q.ListEventsRequest(page_token=tokens["list"]),
        Code.INVALID_ARGUMENT,
        "page_token",
    )
    case(
        "ListEvents token, other range",
        r.ListEvents,
        q.ListEventsRequest(page_token=tokens["events"], from_global_seq=2),
        Code.INVALID_ARGUMENT,
        "page_token",
    )

    # timestamps and windows
    bad_ts = {
        "nanos 1e9": ts(T, 1_000_000_000),
        "nanos -1": ts(T, -1),
        "year 10000": ts(253_402_300_800),
        "seconds -2^63": ts(-(2**63)),
        "seconds 2^63-1": ts(I64),
    }
    for name, bad_t in bad_ts.items():
        case(
            f"Timeline known_at {name}",
            r.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=pid, known_at=bad_t),
            Code.INVALID_ARGUMENT,
            "known_at",
        )
        case(
            f"Timeline as_of {name}",
            r.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=pid, as_of=bad_t),
            Code.INVALID_ARGUMENT,
            "as_of",
        )
        case(
            f"ListEvents occurred.to {name}",
            r.ListEvents,
            q.ListEventsRequest(occurred=q.TimeWindow(to=bad_t)),
            Code.INVALID_ARGUMENT,
            "occurred.to",
        )
        case(
            f"Timeline occurred.from {name}",
            r.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=pid, occurred=q.TimeWindow(**{"from": bad_t})),
            Code.INVALID_ARGUMENT,
            "occurred.from",
        )
        case(
            f"ListEvents recorded.to {name}",
            r.ListEvents,
            q.ListEventsRequest(recorded=q.TimeWindow(to=bad_t)),
            Code.INVALID_ARGUMENT,
            "recorded.to",
        )
        case(
            f"List started.to {name}",
            r.ListProcesses,
            q.ListProcessesRequest(started=q.TimeWindow(to=bad_t)),
            Code.INVALID_ARGUMENT,
            "started.to",
        )
    reversed_window = q.TimeWindow(**{"from": ts(T + 10)}, to=ts(T))
    case(
        "Timeline occurred reversed",
        r.GetProcessTimeline,
        q.GetProcessTimelineRequest(process_id=pid, occurred=reversed_window),
        Code.INVALID_ARGUMENT,
        "occurred",
    )
    case(
        "ListEvents recorded reversed",
        r.ListEvents,
        q.ListEventsRequest(recorded=reversed_window),
        Code.INVALID_ARGUMENT,
        "recorded",
    )
    case(
        "List started reversed",
        r.ListProcesses,
        q.ListProcessesRequest(started=reversed_window),
        Code.INVALID_ARGUMENT,
        "started",
    )

    # filters and sequences
    for i, bad_type in enumerate(["", "a.b", "x" * 200, "1abc", "a b", ">"]):
        case(
            f"Timeline event_types {i}",
            r.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=pid, event_types=["step_done", bad_type]),
            Code.INVALID_ARGUMENT,
            "event_types[1]",
        )
    for number in (99, -1, 2**31 - 1):
        status = q.ProcessStatus.ValueType(number)  # no such status
        case(
            f"List status {status}",
            r.ListProcesses,
            q.ListProcessesRequest(statuses=[q.PROCESS_STATUS_RUNNING, status]),
            Code.INVALID_ARGUMENT,
            "statuses[1]",
        )
        case(
            f"Tree status {status}",
            r.GetProcessTree,
            q.GetProcessTreeRequest(process_id=pid, statuses=[status]),
            Code.INVALID_ARGUMENT,
            "statuses[0]",
        )
    case(
        "List kind too long",
        r.ListProcesses,
        q.ListProcessesRequest(kind="k" * 129),
        Code.INVALID_ARGUMENT,
        "kind",
    )
    case(
        "ListEvents reversed",
        r.ListEvents,
        q.ListEventsRequest(from_global_seq=10, to_global_seq=5),
        Code.INVALID_ARGUMENT,
        "to_global_seq",
    )
    case(
        "ListEvents from past int64",
        r.ListEvents,
        q.ListEventsRequest(from_global_seq=U64),
        Code.INVALID_ARGUMENT,
        "from_global_seq",
    )
    case(
        "ListEvents to past int64",
        r.ListEvents,
        q.ListEventsRequest(to_global_seq=U64),
        Code.INVALID_ARGUMENT,
        "to_global_seq",
    )

    wrong = []
    for name, call, request, code, word in cases:
        try:
            error = await refused(call, request)
        except pytest.fail.Exception:
            wrong.append((name, "answered", ""))
            continue
        details = error.details() or ""
        if error.code() != code or word not in details or "Traceback" in details:
            wrong.append((name, error.code(), details[:200]))
    assert not wrong, "\n".join(map(str, wrong))
    assert len(cases) > 150


T = 1_800_000_000


async def test_edge_values_that_are_valid_are_answered(stack: Stack, unique: str) -> None:
    """Not every odd value is an error: the edges of the ranges answer."""
    pid = f"bq-ok-{unique}"
    await stack.record.Record(ob.RecordRequest(event=event(pid, "process_started", 0)))
    await visible(stack.reads, pid, 1)
    r = stack.reads
    # The timeline is a model of its own, applied apart from the registry `visible` read:
    # the first read waits until it has the process too (it was NOT_FOUND once under load).
    await r.GetProcessTimeline(
        q.GetProcessTimelineRequest(
            process_id=pid, known_at=ts(253_402_300_799, 999_999_999), min_process_seq=1
        ),
        timeout=5,
    )
    await r.GetProcessTimeline(q.GetProcessTimelineRequest(process_id=pid, as_of=ts(0)), timeout=5)
    await r.ListEvents(q.ListEventsRequest(from_global_seq=2**53), timeout=5)
    await r.ListProcesses(
        q.ListProcessesRequest(started=q.TimeWindow(**{"from": ts(-62_135_596_800)})), timeout=5
    )
    await r.GetProcessTree(q.GetProcessTreeRequest(process_id=pid, max_depth=2**32 - 1), timeout=5)
