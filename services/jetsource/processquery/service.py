"""ProcessQueryService: read-only, every answer from the process read models (the
``processes`` registry and ``process_timeline`` in Valkey, their active versions from
the control bucket); it never reads the event stream (an import contract in
pyproject.toml keeps the event store out of this package).

Errors: a malformed id, an unknown status, a bad event type, an invalid Timestamp or
window, a page size out of range, a bad page token -> INVALID_ARGUMENT naming the
field; an unknown process -> NOT_FOUND; Valkey or the control bucket away ->
UNAVAILABLE. The server's interceptor (``jetsource.core.grpcserver``) answers them.

Orders: ListProcesses shows the newest processes first (by the global_seq of their
first event: unique, so paging never repeats or skips one); a process's timeline is
in process_seq order, a subtree's and ListEvents in global_seq order.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import re
import time
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.struct_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge, Histogram
from valkey.asyncio import Valkey

from jetsource._gen.process.v1 import query_pb2 as pb
from jetsource._gen.process.v1 import query_pb2_grpc as pb_grpc
from jetsource._gen.process.v1.events_pb2 import StoredEvent
from jetsource.core import telemetry
from jetsource.core.aio import wait_event
from jetsource.core.clock import from_timestamp, to_timestamp
from jetsource.core.errors import EventStoreUnavailableError, ValidationError
from jetsource.core.grpcserver import RpcError, answer_within, call_outcome
from jetsource.core.ids import validate_aggregate_id
from jetsource.domains.process.models.registry import (
    PROCESSES,
    ProcessesModel,
    ProcessRow,
    processes_spec,
)
from jetsource.domains.process.models.timeline import (
    TIMELINE,
    ProcessTimelineModel,
    timeline_spec,
)
from jetsource.domains.process.validation import kind_problem
from jetsource.domains.sessions.format import SESSION_KIND, from_stored, to_message
from jetsource.processquery.parked import DeadLetterProbe, parked_error
from jetsource.processquery.settings import ProcessQueryOptions
from jetsource.processquery.tokens import PageTokens, invalid
from jetsource.projection.contract import TransientError
from jetsource.projection.control import Control, active_version
from jetsource.projection.valkey import valkey_io

log = logging.getLogger("jetsource.process_query")
SERVICE = pb.DESCRIPTOR.services_by_name["ProcessQueryService"].full_name
T = TypeVar("T")

REQUESTS = Counter(
    "jetsource_process_query_requests_total",
    "Process query RPCs by method and outcome",
    ["method", "outcome"],
)
LATENCY = Histogram(
    "jetsource_process_query_seconds",
    "Process query RPC latency by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

WATCHES = Gauge(
    "jetsource_process_query_watches",
    "Open WatchProcess/WatchSession streams on this replica",
)

STATUS = {
    "running": pb.PROCESS_STATUS_RUNNING,
    "completed": pb.PROCESS_STATUS_COMPLETED,
    "failed": pb.PROCESS_STATUS_FAILED,
    "cancelled": pb.PROCESS_STATUS_CANCELLED,
    "interrupted": pb.PROCESS_STATUS_INTERRUPTED,
}
STATUS_NAME: dict[int, str] = {int(v): k for k, v in STATUS.items()}
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
MAX_SEQ = 2**53  # Valkey scores are doubles: global sequences above this are not exact


def _min_seq(value: int) -> int:
    """``min_process_seq`` checked before any model is looked up: out of range is
    INVALID_ARGUMENT whatever the models' state (it was UNAVAILABLE while the active
    version could not be looked up, the check ran after it)."""
    if value > MAX_SEQ:
        raise invalid("min_process_seq", f"at most {MAX_SEQ}, got {value}")
    return value


# google.protobuf.Timestamp's valid range: 0001-01-01 .. 9999-12-31
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Protobuf decoders (upb, C++, Java, pure Python) refuse a message nested more than
# 100 levels deep, and a tree nests a level per generation: a chain of 1,000 processes
# answered whole reached every client as INTERNAL ("Exceeded upb_DecodeOptions_MaxDepth";
# 98 levels already). A tree keeps each node's nesting (response, nodes down to it, its
# ProcessInfo and what that holds, a failure's error Value included) within this, with
# a margin for decoders that count a level more, and is ``truncated`` below it.
MAX_TREE_NESTING = 96


def _value_nesting(v: Value) -> int:
    """Message levels of a ``Value``: 1, plus a Struct and its entry per object level,
    a ListValue per list level."""
    which = v.WhichOneof("kind")
    if which == "struct_value":
        return 3 + max((_value_nesting(x) for x in v.struct_value.fields.values()), default=0)
    if which == "list_value":
        return 2 + max((_value_nesting(x) for x in v.list_value.values), default=0)
    return 1


def _node_nesting(depth: int, info: pb.ProcessInfo) -> int:
    """How deep a tree answer nests with ``info`` at ``depth`` levels below its root:
    the response, depth + 1 nodes, the ProcessInfo, its deepest field (a timestamp or
    an attribute: 1; the error: its Value's levels)."""
    inner = _value_nesting(info.error) if info.HasField("error") else 1
    return 1 + depth + 1 + 1 + inner


_UNAVAILABLE = (TransientError, EventStoreUnavailableError, ConnectionError, OSError)


# -- request checks ---------------------------------------------------------------------


def _process_id(field: str, value: str, required: bool = True) -> str:
    if not value and not required:
        return ""
    try:
        return validate_aggregate_id(value, field=field)
    except ValidationError as exc:
        raise invalid(field, str(exc)) from exc


def _timestamp(field: str, ts: Timestamp) -> int:
    if not 0 <= ts.nanos < 1_000_000_000:
        raise invalid(field, f"nanos must be in [0, 999999999], got {ts.nanos}")
    if not MIN_SECONDS <= ts.seconds <= MAX_SECONDS:
        raise invalid(field, f"seconds {ts.seconds} is outside years 1..9999")
    return from_timestamp(ts)


def _window(field: str, message: Any, present: bool) -> tuple[int | None, int | None]:
    if not present:
        return None, None
    low = (
        _timestamp(f"{field}.from", getattr(message, "from")) if message.HasField("from") else None
    )
    high = _timestamp(f"{field}.to", message.to) if message.HasField("to") else None
    if low is not None and high is not None and high < low:
        raise invalid(field, "to is before from")
    return low, high


def _page_size(value: int, o: ProcessQueryOptions) -> int:
    if value == 0:
        return o.default_page_size
    if value > o.max_page_size:
        raise invalid("page_size", f"must be between 1 and {o.max_page_size}, got {value}")
    return value


def _statuses(field: str, values: Sequence[int]) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if v not in STATUS_NAME:
            raise invalid(f"{field}[{i}]", f"unknown process status {v}")
        out.append(STATUS_NAME[v])
    return sorted(set(out))


def _event_types(values: Sequence[str]) -> frozenset[str] | None:
    for i, t in enumerate(values):
        if not _EVENT_TYPE.fullmatch(t):
            raise invalid(
                f"event_types[{i}]",
                f"{t[:80]!r} is not an event type (letters, digits and '_', at most 128)",
            )
    return frozenset(values) if values else None


@dataclass(frozen=True)
class EventFilter:
    types: frozenset[str] | None = None
    occurred: tuple[int | None, int | None] = (None, None)
    recorded: tuple[int | None, int | None] = (None, None)
    known_at: int | None = None  # recorded <= T
    as_of: int | None = None  # occurred <= T'

    def bound(self) -> str:
        return json.dumps(
            [sorted(self.types or ()), self.occurred, self.recorded, self.known_at, self.as_of]
        )

    @property
    def trivial(self) -> bool:
        return (
            self.types is None
            and self.occurred == (None, None)
            and self.recorded == (None, None)
            and self.known_at is None
            and self.as_of is None
        )

    def past_end(self, e: StoredEvent) -> bool:
        """Recorded times never go backwards along global_seq: past the recorded bound,
        nothing later matches."""
        rec = from_timestamp(e.recorded_at)
        high = self.recorded[1]
        return (high is not None and rec >= high) or (
            self.known_at is not None and rec > self.known_at
        )

    def match(self, e: StoredEvent) -> bool:
        if self.types is not None and e.event.event_type not in self.types:
            return False
        rec = from_timestamp(e.recorded_at)
        low = self.recorded[0]
        if low is not None and rec < low:
            return False
        occ = from_timestamp(e.event.occurred_at) if e.event.HasField("occurred_at") else rec
        lo, hi = self.occurred
        if (lo is not None and occ < lo) or (hi is not None and occ >= hi):
            return False
        return self.as_of is None or occ <= self.as_of


def _filter(request: Any) -> EventFilter:
    known_at = _timestamp("known_at", request.known_at) if _has(request, "known_at") else None
    as_of = _timestamp("as_of", request.as_of) if _has(request, "as_of") else None
    return EventFilter(
        types=_event_types(request.event_types),
        occurred=_window("occurred", request.occurred, request.HasField("occurred")),
        recorded=_window("recorded", request.recorded, request.HasField("recorded")),
        known_at=known_at,
        as_of=as_of,
    )


def _has(request: Any, field: str) -> bool:
    return field in request.DESCRIPTOR.fields_by_name and request.HasField(field)


# -- views ------------------------------------------------------------------------------


def process_info(row: ProcessRow) -> pb.ProcessInfo:
    info = pb.ProcessInfo(
        process_id=row.process_id,
        parent_process_id=row.parent or row.declared,
        root_process_id=row.root,
        depth=row.depth,
        kind=row.kind,
        name=row.name,
        status=STATUS.get(row.status, pb.PROCESS_STATUS_UNSPECIFIED),
        children=row.children,
        event_count=row.event_count,
        last_event_type=row.last_event_type,
        last_process_seq=row.last_process_seq,
        attributes=row.attributes,
        parent_pending=row.parent_pending,
    )
    if row.started_at is not None:
        info.started_at.CopyFrom(to_timestamp(row.started_at))
    if row.ended_at is not None:
        info.ended_at.CopyFrom(to_timestamp(row.ended_at))
    if row.first_recorded_at:
        info.first_recorded_at.CopyFrom(to_timestamp(row.first_recorded_at))
    if row.last_recorded_at:
        info.last_recorded_at.CopyFrom(to_timestamp(row.last_recorded_at))
    if row.error:
        info.error.CopyFrom(json_format.Parse(row.error, Value()))
    return info


Fetch = Callable[[int, int], Awaitable[list[int]]]


class ProcessQueryService(pb_grpc.ProcessQueryServiceServicer):
    def __init__(
        self,
        redis: Valkey,
        control: Control,
        prefix: str,
        options: ProcessQueryOptions,
        token_seed: str = "",
        dead_letters: DeadLetterProbe | None = None,
    ) -> None:
        self.redis = redis
        self.dead_letters = dead_letters
        self.control = control
        self.prefix = prefix
        self.o = options
        self.tokens = PageTokens(f"{prefix}|{token_seed}")
        self._models: dict[tuple[str, int], Any] = {}
        self._closing = asyncio.Event()
        self._subtrees = KeptSubtrees()

    def close(self) -> None:
        """End every open watch (UNAVAILABLE, so a client reconnects elsewhere): a
        stopping server's streams must not outlive it, retrying a closed connection."""
        self._closing.set()

    # -- plumbing ---------------------------------------------------------------

    async def _active(self, name: str) -> int:
        return await active_version(
            self.control, name, self.o.control_ttl_s, self.o.control_max_stale_s
        )

    async def registry(self) -> ProcessesModel:
        version = await self._active(PROCESSES)
        key = (PROCESSES, version)
        if key not in self._models:
            self._models[key] = ProcessesModel(processes_spec(version), self.redis, self.prefix)
        model: ProcessesModel = self._models[key]
        return model

    async def timeline(self) -> ProcessTimelineModel:
        version = await self._active(TIMELINE)
        key = (TIMELINE, version)
        if key not in self._models:
            self._models[key] = ProcessTimelineModel(
                timeline_spec(version), self.redis, self.prefix
            )
        model: ProcessTimelineModel = self._models[key]
        return model

    def _budget(self, context: grpc.aio.ServicerContext) -> float:
        return answer_within(context.time_remaining(), self.o.default_deadline_s)

    async def _run(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        started = time.perf_counter()
        try:
            with telemetry.rpc_span(SERVICE, method, context):
                async with asyncio.timeout(self._budget(context)):
                    result = await work()
        except BaseException as exc:
            error = _error(exc)
            REQUESTS.labels(method, call_outcome(exc, error)).inc()
            if error is not None and error is not exc:
                raise error from exc
            raise
        REQUESTS.labels(method, "ok").inc()
        LATENCY.labels(method).observe(time.perf_counter() - started)
        return result

    async def _check_parked(self, model: str, version: int, process_id: str) -> None:
        """DATA_LOSS naming the poison when the model parked the process behind a dead
        letter: what it holds of the process stops before that event, and answering it
        as the process would hide that events past it exist."""
        if self.dead_letters is None:
            return
        parked = await self.dead_letters.first(model, version, process_id)
        if parked is not None:
            raise parked_error(process_id, parked)

    @staticmethod
    def _not_found(process_id: str) -> RpcError:
        return RpcError(
            grpc.StatusCode.NOT_FOUND, f"process {process_id!r} not found", field="process_id"
        )

    async def _reach(
        self,
        model: ProcessesModel | ProcessTimelineModel,
        process_id: str,
        wanted: int,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Read your writes: return once ``model`` has applied the process up to
        process_seq ``wanted``, polling it (2 ms at first, doubling up to 50 ms). Not by
        a margin before the deadline (max(100 ms, 10 %) of it, so the answer is ours,
        not DEADLINE_EXCEEDED): DATA_LOSS when a poison parked the process, NOT_FOUND
        when it was pruned, else FAILED_PRECONDITION naming min_process_seq."""
        if wanted == 0:
            return
        if wanted > MAX_SEQ:
            raise invalid("min_process_seq", f"at most {MAX_SEQ}, got {wanted}")
        have = await model.position(process_id)
        if have >= wanted:
            return
        budget = self._budget(context)
        end = time.monotonic() + max(budget - max(0.1, 0.1 * budget), 0.0)
        pause = self.o.poll_min_s
        while time.monotonic() + pause < end:
            await asyncio.sleep(pause)
            have = await model.position(process_id)
            if have >= wanted:
                return
            pause = min(pause * 2, self.o.poll_max_s)
        await self._check_parked(model.spec.name, model.spec.version, process_id)
        if await valkey_io(self.redis.hexists(f"{model.ns}:pruned", process_id)):
            raise self._not_found(process_id)
        raise RpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the {model.spec.name} read model has process {process_id!r} at process_seq "
            f"{have}; min_process_seq {wanted} not reached within the deadline (the "
            "projector applies it shortly: ask again, or with a longer deadline)",
            field="min_process_seq",
        )

    # -- the registry -----------------------------------------------------------

    async def GetProcess(
        self, request: pb.GetProcessRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProcessResponse:
        async def work() -> pb.GetProcessResponse:
            pid = _process_id("process_id", request.process_id)
            wanted = _min_seq(request.min_process_seq)
            registry = await self.registry()
            await self._reach(registry, pid, wanted, context)
            row = await registry.read(pid)
            await self._check_parked(PROCESSES, registry.spec.version, pid)
            if row is None:
                raise self._not_found(pid)
            return pb.GetProcessResponse(process=process_info(row))

        return await self._run("GetProcess", context, work)

    async def ListProcesses(
        self, request: pb.ListProcessesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProcessesResponse:
        async def work() -> pb.ListProcessesResponse:
            statuses = _statuses("statuses", request.statuses)
            kind = request.kind
            problem = kind_problem(kind)  # the rule the observer records kinds by
            if problem is not None:
                raise invalid("kind", problem)
            root = _process_id("root_process_id", request.root_process_id, required=False)
            parent = _process_id("parent_process_id", request.parent_process_id, required=False)
            started = _window("started", request.started, request.HasField("started"))
            size = _page_size(request.page_size, self.o)
            bound = json.dumps([statuses, kind, root, parent, started])
            if started != (None, None) and not (parent or root or kind):
                # Only a start window (and any statuses, one too): the start-time
                # index, newest started first. One status took the status index, in
                # first-appearance order, so the order changed with the statuses asked.
                return await self._by_start(started, statuses, size, bound, request.page_token)
            below = (
                self.tokens.read("ListProcesses", bound, request.page_token)
                if request.page_token
                else None
            )
            model = await self.registry()
            if parent:
                key = model.index("kids", parent)
            elif root:
                key = model.index("root", root)
            elif kind:
                key = model.index("kind", kind)
            elif len(statuses) == 1:
                key = model.index("status", statuses[0])
            else:
                key = model.index("all")

            def wanted(row: ProcessRow) -> bool:
                if statuses and row.status not in statuses:
                    return False
                if kind and row.kind != kind:
                    return False
                if root and row.root != root:
                    return False
                if parent and row.parent != parent:
                    return False
                lo, hi = started
                if lo is not None or hi is not None:
                    if row.started_at is None:
                        return False
                    if (lo is not None and row.started_at < lo) or (
                        hi is not None and row.started_at >= hi
                    ):
                        return False
                return True

            out: list[pb.ProcessInfo] = []
            scanned, cursor, more, used = 0, below, True, 0
            filtered = bool(
                len(statuses) > 1
                or (statuses and (parent or root or kind))
                or (kind and (parent or root))
                or (root and parent)
                or started != (None, None)
            )
            while len(out) < size and used < self.o.max_page_bytes and scanned < self.o.max_scan:
                want = min(max(size - len(out), 16) * 2, 1000) if filtered else size - len(out) + 1
                entries = await model.scan(key, cursor, want)
                if not filtered and len(entries) == want:
                    entries = entries[:-1]  # the extra one only says that more follow
                    want -= 1
                    more_after = True
                else:
                    more_after = False
                rows = await model.read_many([pid for pid, _ in entries])
                for (_, first), row in zip(entries, rows, strict=True):
                    cursor = first
                    scanned += 1
                    if row is not None and wanted(row):
                        out.append(process_info(row))
                        used += out[-1].ByteSize()
                        if len(out) == size or used >= self.o.max_page_bytes:
                            break
                if more_after:
                    continue
                if len(entries) < want and (not entries or cursor == entries[-1][1]):
                    more = False
                    break
            token = (
                self.tokens.make("ListProcesses", bound, cursor)
                if more and cursor is not None
                else ""
            )
            return pb.ListProcessesResponse(processes=out, next_page_token=token)

        return await self._run("ListProcesses", context, work)

    async def _by_start(
        self,
        started: tuple[int | None, int | None],
        statuses: list[str],
        size: int,
        bound: str,
        page_token: str,
    ) -> pb.ListProcessesResponse:
        method = "ListProcesses/started"
        after: tuple[int, str] | None = None
        if page_token:
            raw = self.tokens.read_raw(method, bound, page_token)
            if len(raw) < 8:
                raise invalid("page_token", "not a page token of this request")
            try:
                after = (int.from_bytes(raw[:8], "big", signed=True), raw[8:].decode())
            except UnicodeDecodeError as exc:
                raise invalid("page_token", "not a page token of this request") from exc
        # The index holds µs: a slightly wider range, then the exact window in ns.
        low = None if started[0] is None else started[0] // 1000
        high = None if started[1] is None else started[1] // 1000 + 1
        model = await self.registry()

        def wanted(row: ProcessRow | None) -> bool:
            if row is None or row.started_at is None:
                return False
            lo, hi = started
            if (lo is not None and row.started_at < lo) or (
                hi is not None and row.started_at >= hi
            ):
                return False
            return not statuses or row.status in statuses

        out: list[pb.ProcessInfo] = []
        scanned, more, used = 0, False, 0
        while True:
            want = min(max(size - len(out), 16) * 2, 1000)
            entries = await model.scan_started(low, high, after, want)
            rows = await model.read_many([pid for pid, _ in entries])
            full = False
            for (pid, us), row in zip(entries, rows, strict=True):
                if len(out) == size or used >= self.o.max_page_bytes:
                    full = True  # an entry beyond the page: more may follow
                    break
                after = (us, pid)
                scanned += 1
                if row is not None and wanted(row):
                    out.append(process_info(row))
                    used += out[-1].ByteSize()
            if full:
                more = True
                break
            if len(entries) < want:
                more = False
                break
            if scanned >= self.o.max_scan:
                more = True
                break
        token = ""
        if more and after is not None:
            cursor = after[0].to_bytes(8, "big", signed=True) + after[1].encode()
            token = self.tokens.make_raw(method, bound, cursor)
        return pb.ListProcessesResponse(processes=out, next_page_token=token)

    async def GetProcessTree(
        self, request: pb.GetProcessTreeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProcessTreeResponse:
        async def work() -> pb.GetProcessTreeResponse:
            pid = _process_id("process_id", request.process_id)
            statuses = set(_statuses("statuses", request.statuses))
            max_depth = request.max_depth
            wanted = _min_seq(request.min_process_seq)
            model = await self.registry()
            await self._reach(model, pid, wanted, context)
            top = await model.read(pid)
            if top is None:
                raise self._not_found(pid)
            root = pb.ProcessNode(process=process_info(top))
            room = [self.o.max_tree_nodes - 1, self.o.max_tree_bytes - root.ByteSize()]
            level: list[tuple[pb.ProcessNode, ProcessRow]] = [(root, top)]
            depth = 0
            deep = False  # a node left out as nested too deep for a client to decode
            while level:
                # ``truncated`` only when a child that would be shown is left out: one
                # that ``statuses`` hides is not cut off (so a filtered tree reads the
                # level below the depth, and counts only what it keeps).
                below = max_depth and depth >= max_depth
                if below and not statuses:
                    truncated = deep or any(row.children for _, row in level)
                    return pb.GetProcessTreeResponse(root=root, truncated=truncated)
                kept = await self._kept_children(model, level, statuses, 0 if below else room[0])
                if below or not kept:
                    return pb.GetProcessTreeResponse(root=root, truncated=deep or bool(kept))
                nxt: list[tuple[pb.ProcessNode, ProcessRow]] = []
                for node, child in kept:
                    info = process_info(child)
                    if _node_nesting(depth + 1, info) > MAX_TREE_NESTING:
                        deep = True  # its subtree goes with it; read on from its parent
                        continue
                    room[1] -= info.ByteSize() + 8
                    if len(nxt) == room[0] or room[1] < 0:
                        # At MAX_TREE_NODES, or MAX_TREE_BYTES: cut here.
                        return pb.GetProcessTreeResponse(root=root, truncated=True)
                    nxt.append((node.children.add(process=info), child))
                room[0] -= len(nxt)
                level, depth = nxt, depth + 1
            return pb.GetProcessTreeResponse(root=root, truncated=deep)

        return await self._run("GetProcessTree", context, work)

    async def _kept_children(
        self,
        model: ProcessesModel,
        level: list[tuple[pb.ProcessNode, ProcessRow]],
        statuses: set[str],
        enough: int,
    ) -> list[tuple[pb.ProcessNode, ProcessRow]]:
        """The children of ``level`` a tree shows (recorded, of a wanted status), each
        with its parent's node, in order; read in chunks and no more once there are
        more than ``enough`` (the tree is cut there anyway)."""
        pairs = [(node, c) for node, row in level for c in row.children]
        out: list[tuple[pb.ProcessNode, ProcessRow]] = []
        for i in range(0, len(pairs), 1000):
            chunk = pairs[i : i + 1000]
            rows = await model.read_many([c for _, c in chunk])
            for (node, _), child in zip(chunk, rows, strict=True):
                if child is not None and (not statuses or child.status in statuses):
                    out.append((node, child))
            if len(out) > enough:
                break
        return out

    # -- timelines ----------------------------------------------------------------

    async def _fetcher(self, model: ProcessTimelineModel, pid: str, subtree: bool) -> Fetch:
        """How to read the process's (or subtree's) global sequences after a cursor,
        for one page: a wide subtree's from what is kept of it."""
        if subtree:
            return await self._subtrees.fetch(model, pid)
        return (await self._source(model, pid, subtree)).fetch

    async def _source(self, model: ProcessTimelineModel, pid: str, subtree: bool) -> _Source:
        if not subtree:
            key = model.process_key(pid)
            return _Source(lambda after, count: model.seqs(key, after, None, count))
        if await model.root_of(pid) == pid:
            key = model.tree_key(pid)
            return _Source(lambda after, count: model.seqs(key, after, None, count), key)
        members = await model.subtree(pid)
        keys = [model.process_key(p) for p in members]
        return _Source(
            lambda after, count: model.merged_seqs(keys, after, None, count), members=members
        )

    async def _page(
        self,
        model: ProcessTimelineModel,
        fetch: Fetch,
        after: int,
        size: int,
        flt: EventFilter,
    ) -> tuple[list[StoredEvent], int | None]:
        """Up to ``size`` matching events after ``after`` (and about ``max_page_bytes``);
        the cursor to go on from, or None at the end."""
        out: list[StoredEvent] = []
        scanned, cursor, used = 0, after, 0
        limit = self.o.max_page_bytes
        if flt.trivial:
            # Nothing to filter: one read of exactly a page (and one more sequence, to
            # know whether another page follows).
            seqs = await fetch(cursor, size + 1)
            events = await model.events(seqs[:size])
            n = fitting([e.ByteSize() for e in events], limit)
            if n < len(events):  # cut by its bytes
                return events[:n], events[n - 1].global_seq
            if len(seqs) <= size:
                return events, None
            return events, seqs[size - 1]
        while len(out) < size and used < limit and scanned < self.o.max_scan:
            want = min(max(size - len(out), 16) * 2, 1000)
            seqs = await fetch(cursor, want)
            if not seqs:
                return out, None
            events = await model.events(seqs)
            consumed_all = True
            for e in events:
                if flt.past_end(e):
                    return out, None
                cursor = e.global_seq
                scanned += 1
                if flt.match(e):
                    out.append(e)
                    used += e.ByteSize()
                    if len(out) == size or used >= limit:
                        consumed_all = e.global_seq == seqs[-1]
                        break
            if consumed_all:
                cursor = max(cursor, seqs[-1])
                if len(seqs) < want:
                    return out, None
        return out, cursor

    async def GetProcessTimeline(  # type: ignore[override]  # bytes: sent as they are
        self, request: pb.GetProcessTimelineRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProcessTimelineResponse | bytes:
        async def work() -> pb.GetProcessTimelineResponse | bytes:
            pid = _process_id("process_id", request.process_id)
            flt = _filter(request)
            size = _page_size(request.page_size, self.o)
            wanted = _min_seq(request.min_process_seq)
            bound = json.dumps([pid, request.subtree, flt.bound()])
            after = (
                self.tokens.read("GetProcessTimeline", bound, request.page_token)
                if request.page_token
                else 0
            )
            model = await self.timeline()
            await self._reach(model, pid, wanted, context)
            # One round trip answers most requests: a process, or a root's whole tree,
            # with nothing to filter.
            status, seqs, first = await model.page(pid, request.subtree, after, size + 1)
            await self._check_parked(TIMELINE, model.spec.version, pid)
            if status == 0:
                raise self._not_found(pid)
            if status == 1 and flt.trivial:
                # The stored events are the answer's bytes: sent as they are.
                page = first[:size]
                n = fitting([len(e) for e in page], self.o.max_page_bytes)
                if n < len(page):  # cut by its bytes: go on after the last one sent
                    last = StoredEvent.FromString(page[n - 1]).global_seq
                    token = self.tokens.make("GetProcessTimeline", bound, last)
                else:
                    more = len(seqs) > size
                    token = (
                        self.tokens.make("GetProcessTimeline", bound, seqs[size - 1])
                        if more
                        else ""
                    )
                return encoded_timeline(page[:n], token)
            fetch = await self._fetcher(model, pid, request.subtree)
            events, cursor = await self._page(model, fetch, after, size, flt)
            token = "" if cursor is None else self.tokens.make("GetProcessTimeline", bound, cursor)
            return pb.GetProcessTimelineResponse(events=events, next_page_token=token)

        return await self._run("GetProcessTimeline", context, work)

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEventsResponse:
        async def work() -> pb.ListEventsResponse:
            low, high = request.from_global_seq, request.to_global_seq
            if low > MAX_SEQ:
                raise invalid("from_global_seq", f"at most {MAX_SEQ}, got {low}")
            if high > MAX_SEQ:
                raise invalid("to_global_seq", f"at most {MAX_SEQ}, got {high}")
            if high and low > high:
                raise invalid("to_global_seq", f"{high} is below from_global_seq {low}")
            flt = _filter(request)
            size = _page_size(request.page_size, self.o)
            bound = json.dumps([low, high, flt.bound()])
            after = (
                self.tokens.read("ListEvents", bound, request.page_token)
                if request.page_token
                else max(low - 1, 0)
            )
            model = await self.timeline()
            upto = high or None

            async def fetch(cursor: int, count: int) -> list[int]:
                return await model.seqs(model.all_key, cursor, upto, count)

            events, cursor = await self._page(model, fetch, after, size, flt)
            token = "" if cursor is None else self.tokens.make("ListEvents", bound, cursor)
            return pb.ListEventsResponse(events=events, next_page_token=token)

        return await self._run("ListEvents", context, work)

    async def WatchProcess(
        self, request: pb.WatchProcessRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchProcessResponse]:
        started = time.perf_counter()

        async def check() -> tuple[str, ProcessTimelineModel]:
            pid = _process_id("process_id", request.process_id)
            if request.after_global_seq > MAX_SEQ:
                raise invalid("after_global_seq", f"at most {MAX_SEQ}")
            model = await self.timeline()
            # The registry and the timeline are two models, applied apart: a process
            # GetProcess shows may not be in the timeline yet. Known to either, it is
            # watched (its events come as the timeline applies them).
            if not await model.exists(pid) and await (await self.registry()).read(pid) is None:
                raise self._not_found(pid)
            return pid, model

        try:
            pid, _model = await check()
        except BaseException as exc:
            error = _error(exc)
            REQUESTS.labels("WatchProcess", call_outcome(exc, error)).inc()
            if error is not None and error is not exc:
                raise error from exc
            raise
        REQUESTS.labels("WatchProcess", "ok").inc()
        try:
            async for e in self._watch(pid, request.subtree, request.after_global_seq, context):
                yield pb.WatchProcessResponse(event=e)
        finally:
            LATENCY.labels("WatchProcess").observe(time.perf_counter() - started)

    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchSessionResponse]:
        """A session's events from ``after_seq``, then live: the session root process's
        timeline, each event mapped to the session format (domains/sessions/format.py);
        ``seq`` is the root's ``process_seq``."""
        started = time.perf_counter()

        async def check() -> str:
            sid = _process_id("session_id", request.session_id)
            if request.after_seq < 0:
                raise invalid("after_seq", f"must be >= 0, got {request.after_seq}")
            row = await (await self.registry()).read(sid)
            if row is None or row.kind != SESSION_KIND:
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND, f"session {sid!r} not found", field="session_id"
                )
            return sid

        try:
            sid = await check()
        except BaseException as exc:
            error = _error(exc)
            REQUESTS.labels("WatchSession", call_outcome(exc, error)).inc()
            if error is not None and error is not exc:
                raise error from exc
            raise
        REQUESTS.labels("WatchSession", "ok").inc()
        after = request.after_seq
        try:
            async for e in self._watch(sid, False, 0, context):
                if e.process_seq <= after:
                    continue
                after = e.process_seq
                yield pb.WatchSessionResponse(event=to_message(from_stored(e, sid)))
        finally:
            LATENCY.labels("WatchSession").observe(time.perf_counter() - started)

    async def _watch(
        self, pid: str, subtree: bool, cursor: int, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[StoredEvent]:
        """The events of ``pid`` (or its subtree) above global seq ``cursor``, then live.

        A subtree can grow below the cursor: a process recorded before its parent joins
        the tree, with its history, when the parent arrives (or a link above it does).
        Its events at or below the cursor are sent once, when it is seen to join (in
        global order among themselves); those above come as any other. What was in the
        subtree when the watch began is sent from ``cursor`` on, as asked.

        It ends when the client goes (cancel or deadline: grpc does not cancel a handler
        that is not writing, so the loop asks) and when the server stops."""
        pubsub = self.redis.pubsub()
        model = await self.timeline()
        # Subscribe before the first read, so nothing applied between them is missed.
        try:
            await valkey_io(pubsub.subscribe(model.channel))
        except TransientError as exc:
            await pubsub.aclose()
            raise RpcError(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}") from exc
        WATCHES.inc()
        # Members of the subtree whose events at or below the cursor have all been sent
        # (or were below the position asked for); for a root, how many entries of its
        # tree are at or below the cursor as far as this watch has sent them (more in
        # the model: something joined below the cursor).
        known: set[str] | None = None
        tally = 0
        try:
            while True:
                if self._closing.is_set():
                    raise RpcError(grpc.StatusCode.UNAVAILABLE, "process query is stopping")
                if context.done():
                    return  # the client cancelled or its deadline passed
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    # A client library below swallowed the cancellation: honour it.
                    raise asyncio.CancelledError
                try:
                    model = await self.timeline()
                    if subtree and known is None:
                        # The count first, then the members: one that joins between
                        # them is taken as there at the start (and the count, short,
                        # looks again).
                        if await model.root_of(pid) == pid:
                            tally = await model.count(model.tree_key(pid), cursor)
                        # (The process itself even before the timeline has it: its
                        # own events are sent from the cursor on, as asked.)
                        known = {pid, *await model.subtree(pid)}
                    source = await self._source(model, pid, subtree)
                    seqs = await source.fetch(cursor, 500)
                    events = await model.events(seqs)
                except _UNAVAILABLE as exc:
                    log.warning("watch %s: %r; retrying", pid, exc)
                    seqs, events, source = [], [], _Source(_nothing)
                if known is not None:
                    # Joined since the last look: members not known yet, and processes
                    # whose events this read found though they were not known (none of
                    # their events was sent: they were not in the tree).
                    joined = {p for p in source.members or () if p not in known}
                    joined |= {e.event.process_id for e in events} - known
                    if joined:
                        known |= joined
                        async for e in self._late(model, joined, cursor, context):
                            tally += 1
                            yield e
                for e in events:
                    cursor = e.global_seq
                    yield e
                tally += sum(1 for q in seqs if q <= cursor)
                if known is not None and source.tree_key is not None:
                    # A root's tree: joins are rare, so count what is below the cursor
                    # (one cheap read) and look at the members only when it moved.
                    try:
                        below = await model.count(source.tree_key, cursor)
                        if below != tally:
                            members = set(await model.subtree(pid))
                            joined = members - known
                            known |= members
                            async for e in self._late(model, joined, cursor, context):
                                yield e
                            tally = below
                    except _UNAVAILABLE as exc:
                        log.warning("watch %s: %r; retrying", pid, exc)
                if seqs:
                    continue
                try:
                    await valkey_io(
                        pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self.o.watch_poll_s
                        )
                    )
                except (TimeoutError, *_UNAVAILABLE):
                    # Valkey away: poll later (at once when the server stops).
                    await wait_event(self._closing, self.o.watch_poll_s)
        finally:
            WATCHES.dec()
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
                await pubsub.aclose()

    async def _late(
        self,
        model: ProcessTimelineModel,
        joined: set[str],
        upto: int,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[StoredEvent]:
        """The events of processes that joined a watched subtree, at or below ``upto``,
        in global order, a chunk at a time (a read that fails is asked again)."""
        if not joined or upto <= 0:
            return
        keys = [model.process_key(p) for p in sorted(joined)]
        after = 0
        while not context.done():
            if self._closing.is_set():
                raise RpcError(grpc.StatusCode.UNAVAILABLE, "process query is stopping")
            try:
                seqs = await model.merged_seqs(keys, after, upto, 500)
                events = await model.events(seqs)
            except _UNAVAILABLE as exc:
                log.warning("watch: %r; retrying", exc)
                await wait_event(self._closing, self.o.watch_poll_s)
                continue
            for e in events:
                yield e
            if len(seqs) < 500:
                return
            after = seqs[-1]


class KeptSeqs:
    """A subtree's global sequences as of one ``tree_stamp``: a page is a slice."""

    def __init__(self, seqs: array[int]) -> None:
        self.seqs = seqs

    async def fetch(self, after: int, count: int) -> list[int]:
        at = bisect.bisect_right(self.seqs, after)
        return self.seqs[at : at + count].tolist()


class KeptSubtrees:
    """The merged global sequences of wide subtrees of processes that are not roots,
    kept per model namespace and process while their root's tree is unchanged.

    A root's tree has an index of its own, a process's timeline too, but a subtree
    below the root is merged from its processes' indexes: every page asked each of
    them for a page's worth, so paging through a subtree of M processes cost M
    requests and up to M pages of sequences per page (3,000 children, 9,000 events,
    91 pages: 14.5 s, against 0.3 s for the root's tree). A subtree of more than
    ``WIDE`` processes is merged whole once its root's tree held still from one page
    to the next, and kept (at most ``max_seqs`` sequences in all, least recently used
    dropped); each page checks the model's ``tree_stamp`` (one request) and slices. A
    subtree over ``max_seqs`` on its own, or on a tree still being written, is merged
    per page as before."""

    WIDE = 64

    def __init__(self, max_seqs: int = 2_000_000) -> None:
        self.max_seqs = max_seqs
        self._kept: OrderedDict[tuple[str, str], tuple[tuple[str, int, int, int], KeptSeqs]] = (
            OrderedDict()
        )
        self._total = 0
        # (namespace, process) -> the stamp its subtree's last page was merged at, per page
        self._seen: OrderedDict[tuple[str, str], tuple[str, int, int, int]] = OrderedDict()

    async def fetch(self, model: ProcessTimelineModel, pid: str) -> Fetch:
        """How to read the subtree's global sequences after a cursor: a root's from
        its tree's index, a wide subtree's from what is kept (merged whole when its
        tree changed), a narrow or too large one merged per read. As many requests as
        before for a root or a narrow subtree (the stamp names the root)."""
        stamp = await model.tree_stamp(pid)
        if stamp is None:  # not (or no longer) in the model
            return _nothing
        if stamp[0] == pid:
            tree = model.tree_key(pid)
            return lambda after, count: model.seqs(tree, after, None, count)
        key = (model.ns, pid)
        found = self._kept.get(key)
        if found is not None and found[0] == stamp:
            self._kept.move_to_end(key)
            return found[1].fetch
        members = await model.subtree(pid)
        keys = [model.process_key(p) for p in members]
        if len(members) > self.WIDE:
            # Merged whole only once its tree held still from one page to the next: a
            # tree still being written would be merged whole on every page (O(subtree)
            # a page, worse than a page's merge).
            if self._seen.get(key) == stamp and await model.sizes(keys) <= self.max_seqs:
                # Read after the stamp: what is read is as new as the stamp or newer,
                # and a newer one is read again at the next page (its stamp differs).
                kept = KeptSeqs(array("q", await model.merged_all(keys)))
                self._put(key, stamp, kept)
                self._seen.pop(key, None)
                return kept.fetch
            self._seen[key] = stamp
            self._seen.move_to_end(key)
            while len(self._seen) > 4096:
                self._seen.popitem(last=False)
        return lambda after, count: model.merged_seqs(keys, after, None, count)

    def _put(self, key: tuple[str, str], stamp: tuple[str, int, int, int], kept: KeptSeqs) -> None:
        old = self._kept.pop(key, None)
        if old is not None:
            self._total -= len(old[1].seqs)
        self._kept[key] = (stamp, kept)
        self._total += len(kept.seqs)
        while self._total > self.max_seqs and len(self._kept) > 1:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._total -= len(dropped.seqs)


@dataclass(frozen=True)
class _Source:
    """Where a timeline read finds its global sequences: ``tree_key`` for a root's
    subtree, ``members`` for a subtree merged from its processes' own indexes."""

    fetch: Fetch
    tree_key: str | None = None
    members: list[str] | None = None


async def _nothing(after: int, count: int) -> list[int]:
    return []


def _error(exc: BaseException) -> RpcError | None:
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, TimeoutError):
        return RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    if isinstance(exc, _UNAVAILABLE):
        return RpcError(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}")
    return None


def fitting(sizes: Sequence[int], limit: int) -> int:
    """How many of the first items (of these encoded sizes) one answer carries: up to
    and including the one that reaches ``limit`` bytes. gRPC refuses to send a message
    over its limit (RESOURCE_EXHAUSTED, and the client would never get the page), and
    one event may hold 256 KiB: pages are bounded in bytes as well as in count."""
    total = 0
    for i, size in enumerate(sizes):
        total += size
        if total >= limit:
            return i + 1
    return len(sizes)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encoded_timeline(events: Sequence[bytes], token: str) -> bytes:
    """A GetProcessTimelineResponse made of stored events as they are: field 1
    (repeated StoredEvent) once per event, then field 2 (next_page_token)."""
    out = bytearray()
    for e in events:
        out += b"\x0a" + _varint(len(e)) + e
    if token:
        raw = token.encode()
        out += b"\x12" + _varint(len(raw)) + raw
    return bytes(out)


def _serializer(cls: Any) -> Callable[[Any], bytes]:
    def serialize(response: Any) -> bytes:
        return response if isinstance(response, bytes) else cls.SerializeToString(response)

    return serialize


def add_to_server(servicer: ProcessQueryService, server: grpc.aio.Server) -> None:
    """``add_ProcessQueryServiceServicer_to_server``, except that an answer already
    encoded (a timeline page of stored events) is sent as it is."""
    service = pb.DESCRIPTOR.services_by_name["ProcessQueryService"]
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=_serializer(response),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
