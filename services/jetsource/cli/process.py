"""`jetsource process ...`: read the process ledger through ProcessQueryService.

    jetsource process list [--status S]... [--kind K] [--root ID] [--parent ID]
                           [--started-from T] [--started-to T] [--page-size N] [--all]
    jetsource process show ID
    jetsource process tree ID [--depth N] [--status S]...
    jetsource process timeline ID [--subtree] [--type T]... [--occurred-from T]
                           [--occurred-to T] [--recorded-from T] [--recorded-to T]
                           [--known-at T] [--as-of T] [--page-size N] [--all]
    jetsource process watch ID [--subtree] [--after SEQ] [--timeout S]

Times are RFC 3339 (``2026-12-02T10:00:00Z``). Without ``--all``, list and timeline
print one page and the token of the next (``--page-token``). Target:
``--process-query`` / ``JETSOURCE_CLIENT__PROCESS_QUERY`` (default: the local
service). ``-o json`` prints JSON (one document per line for watch). Exit codes: 0 ok,
1 refused, 2 usage, 3 unavailable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import query_pb2 as pb
from jetsource._gen.process.v1 import query_pb2_grpc as pb_grpc
from jetsource.cli import output as out
from jetsource.cli.ctx import Target, _connect, _more, _quiet_stdout, _run, _settings, _use
from jetsource.cli.output import Mode
from jetsource.client import open_channel
from jetsource.core.clock import to_timestamp

app = typer.Typer(
    help="Read the process ledger: the registry, trees and timelines (ProcessQueryService).",
    no_args_is_help=True,
)
T = TypeVar("T")
# The request fields' wire types (uint32 page_size and max_depth, uint64 sequences):
# a larger number is a usage error here, not a protobuf ValueError and a traceback.
U32, U64 = out.U32, out.U64

TARGET = typer.Option(
    None,
    "--process-query",
    callback=out.target,
    help="host:port (default: JETSOURCE_CLIENT__PROCESS_QUERY)",
)
TIMEOUT = typer.Option(
    None,
    "--timeout",
    callback=out.seconds,
    help="Seconds to wait (default: JETSOURCE_CLIENT__TIMEOUT_S, 10)",
)
OUTPUT = typer.Option(
    None, "--output", "-o", case_sensitive=False, help="table, json or plain (as the global one)"
)
MIN_SEQ = typer.Option(
    0,
    "--min-seq",
    min=0,
    max=U64,
    help="Read your write: wait (within --timeout) until the read model has the "
    "process at this process_seq (the observer's answer); 0: as it is now",
)
STATUS = typer.Option(
    [], "--status", help="running, completed, failed, cancelled or interrupted (repeatable)"
)
STATUSES = {
    "running": pb.PROCESS_STATUS_RUNNING,
    "completed": pb.PROCESS_STATUS_COMPLETED,
    "failed": pb.PROCESS_STATUS_FAILED,
    "cancelled": pb.PROCESS_STATUS_CANCELLED,
    "interrupted": pb.PROCESS_STATUS_INTERRUPTED,
}


def _target(flag: str | None, timeout: float | None) -> Target:
    client = _settings().client
    address = flag or os.environ.get("JETSOURCE_CLIENT__PROCESS_QUERY", "")
    if not address:
        from jetsource.processquery.settings import ProcessQueryOptions

        o = ProcessQueryOptions()
        host = os.environ.get("JETSOURCE_PROCESS_QUERY__GRPC_HOST", o.grpc_host)
        port = os.environ.get("JETSOURCE_PROCESS_QUERY__GRPC_PORT", str(o.grpc_port))
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
        address = f"{host}:{port}"
    return Target(
        "process query service",
        address,
        "JETSOURCE_CLIENT__PROCESS_QUERY",
        "--process-query",
        client,
        client.timeout_s if timeout is None else timeout,
    )


def _call(
    target: Target,
    work: Callable[[pb_grpc.ProcessQueryServiceStub, Any], Awaitable[T]],
    *,
    ctrl_c_stops: bool = False,
) -> T:
    """``ctrl_c_stops``: Ctrl-C is how the command ends (``watch``), not a CANCELLED."""

    async def run() -> T:
        channel, metadata = open_channel(target.address, target.client)
        async with channel:
            await _connect(channel, target)
            return await work(pb_grpc.ProcessQueryServiceStub(channel), metadata)

    return _run(target, run, ctrl_c_stops=ctrl_c_stops)


def _time(flag: str, value: str | None) -> Timestamp | None:
    if value is None:
        return None
    ns = out.time_option(flag, value)
    return to_timestamp(ns)


def _build(make: Callable[[], T]) -> T:
    """A request from the command line's text: text that is not UTF-8 is a usage error."""
    try:
        return make()
    except UnicodeEncodeError as exc:
        out.fail(out.USAGE, "INVALID_ARGUMENT", out.not_utf8(exc))


def _window(flag: str, low: str | None, high: str | None) -> pb.TimeWindow | None:
    a, b = _time(f"--{flag}-from", low), _time(f"--{flag}-to", high)
    if a is None and b is None:
        return None
    window = pb.TimeWindow()
    if a is not None:
        getattr(window, "from").CopyFrom(a)
    if b is not None:
        window.to.CopyFrom(b)
    return window


def _statuses(values: list[str]) -> list[pb.ProcessStatus.ValueType]:
    out_: list[pb.ProcessStatus.ValueType] = []
    for v in values:
        if v.lower() not in STATUSES:
            out.fail(
                out.USAGE,
                "INVALID_ARGUMENT",
                f"--status: {v!r} is not one of {', '.join(STATUSES)}",
                field="--status",
            )
        out_.append(STATUSES[v.lower()])
    return out_


# -- views ----------------------------------------------------------------------------


def _status(value: int) -> str:
    return pb.ProcessStatus.Name(value).removeprefix("PROCESS_STATUS_").lower()  # type: ignore[arg-type]


def process_json(p: pb.ProcessInfo) -> dict[str, Any]:
    body = out.data(p)
    body["status"] = _status(p.status)
    body["error"] = json_format.MessageToDict(p.error) if p.HasField("error") else None
    return body


def event_json(e: epb.StoredEvent) -> dict[str, Any]:
    c = e.event
    body = out.data(c)
    body.pop("data", None)
    body.pop("typed", None)
    if c.HasField("data"):
        # a Struct's numbers are doubles: integral ones print as integers (1, not 1.0)
        from jetsource.domains.sessions.format import restore_ints

        body["data"] = restore_ints(json_format.MessageToDict(c.data))
    elif c.HasField("typed"):
        body["typed"] = {"content_type": c.typed.content_type, "size": len(c.typed.data)}
    return {
        "global_seq": e.global_seq,
        "process_seq": e.process_seq,
        "recorded_at": out.timestamp(e.recorded_at),
        "event": body,
    }


def _process_rows(processes: Any) -> list[list[Any]]:
    return [
        [
            p.process_id,
            _status(p.status),
            p.kind,
            p.name,
            p.parent_process_id + (" (pending)" if p.parent_pending else ""),
            p.depth,
            p.event_count,
            out.timestamp(p.started_at),
        ]
        for p in processes
    ]


PROCESS_COLUMNS = ["process", "status", "kind", "name", "parent", "depth", "events", "started"]
EVENT_COLUMNS = ["global", "process", "seq", "type", "occurred", "recorded", "data"]


def _event_row(e: epb.StoredEvent) -> list[Any]:
    c = e.event
    data = (
        json_format.MessageToJson(c.data, indent=None, sort_keys=True) if c.HasField("data") else ""
    )
    return [
        e.global_seq,
        c.process_id,
        e.process_seq,
        c.event_type,
        out.timestamp(c.occurred_at),
        out.timestamp(e.recorded_at),
        data[:120],
    ]


# -- commands -------------------------------------------------------------------------


@app.command("list")
def list_(
    status: list[str] = STATUS,
    kind: str = typer.Option("", "--kind"),
    root: str = typer.Option("", "--root", help="Only this root's tree"),
    parent: str = typer.Option("", "--parent", help="Only this process's children"),
    started_from: str | None = typer.Option(None, "--started-from", help="RFC 3339"),
    started_to: str | None = typer.Option(None, "--started-to", help="RFC 3339 (exclusive)"),
    page_size: int = typer.Option(
        0, "--page-size", min=0, max=U32, help="0: the service's default"
    ),
    page_token: str = typer.Option("", "--page-token"),
    all_pages: bool = typer.Option(False, "--all", help="Every page"),
    process_query: str | None = TARGET,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """Processes, newest first."""
    _use(output)
    target = _target(process_query, timeout)
    statuses = _statuses(status)
    request = _build(
        lambda: pb.ListProcessesRequest(
            statuses=statuses,
            kind=kind,
            root_process_id=root,
            parent_process_id=parent,
            page_size=page_size,
            page_token=page_token,
        )
    )
    window = _window("started", started_from, started_to)
    if window is not None:
        request.started.CopyFrom(window)

    async def work(stub: pb_grpc.ProcessQueryServiceStub, md: Any) -> tuple[list[Any], str]:
        found: list[pb.ProcessInfo] = []
        while True:
            page = await stub.ListProcesses(request, timeout=target.timeout, metadata=md)
            found += page.processes
            if not (all_pages and page.next_page_token):
                return found, page.next_page_token
            request.page_token = page.next_page_token

    processes, token = _call(target, work)
    if out.mode() == Mode.json:
        out.emit_json({"processes": [process_json(p) for p in processes], "next_page_token": token})
        return
    out.table("processes", PROCESS_COLUMNS, _process_rows(processes))
    _more(token, "processes")  # on stderr, as ctx's: stdout stays the table


@app.command()
def show(
    process_id: str,
    min_seq: int = MIN_SEQ,
    process_query: str | None = TARGET,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """One process: status, kind, name, tree position, times, counts."""
    _use(output)
    target = _target(process_query, timeout)

    async def work(stub: pb_grpc.ProcessQueryServiceStub, md: Any) -> pb.ProcessInfo:
        request = pb.GetProcessRequest(process_id=process_id, min_process_seq=min_seq)
        response: pb.GetProcessResponse = await stub.GetProcess(
            request, timeout=target.timeout, metadata=md
        )
        return response.process

    p = _call(target, work)
    body = process_json(p)
    if out.mode() == Mode.json:
        out.emit_json(body)
        return
    out.fields((k, v) for k, v in body.items() if v not in (None, "", [], {}))


@app.command()
def tree(
    process_id: str,
    depth: int = typer.Option(
        0, "--depth", min=0, max=U32, help="Levels below the process; 0: all"
    ),
    status: list[str] = STATUS,
    min_seq: int = MIN_SEQ,
    process_query: str | None = TARGET,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """A process and its descendants."""
    _use(output)
    target = _target(process_query, timeout)

    async def work(stub: pb_grpc.ProcessQueryServiceStub, md: Any) -> pb.GetProcessTreeResponse:
        request = pb.GetProcessTreeRequest(
            process_id=process_id,
            max_depth=depth,
            statuses=_statuses(status),
            min_process_seq=min_seq,
        )
        response: pb.GetProcessTreeResponse = await stub.GetProcessTree(
            request, timeout=target.timeout, metadata=md
        )
        return response

    response = _call(target, work)

    def node_json(n: pb.ProcessNode) -> dict[str, Any]:
        return {**process_json(n.process), "children": [node_json(c) for c in n.children]}

    if out.mode() == Mode.json:
        out.emit_json({"root": node_json(response.root), "truncated": response.truncated})
        return

    def lines(n: pb.ProcessNode, indent: str) -> None:
        p = n.process
        kind = f" [{p.kind}]" if p.kind else ""
        name = f" {p.name}" if p.name else ""
        out.line(f"{indent}{p.process_id}{kind}{name}: {_status(p.status)}, "
                 f"{out.count(p.event_count, 'event')}")  # fmt: skip
        for c in n.children:
            lines(c, indent + "  ")

    lines(response.root, "")
    if response.truncated:
        # cut by --depth, MAX_TREE_NODES/BYTES, or the 92 levels a tree answer nests
        out.line(
            "truncated: raise --depth, or run `jetsource process tree ID` on a node "
            "at the bottom, to see more"
        )


@app.command()
def timeline(
    process_id: str,
    subtree: bool = typer.Option(False, "--subtree", help="The process and its descendants"),
    event_type: list[str] = typer.Option([], "--type", help="Only these event types"),
    occurred_from: str | None = typer.Option(None, "--occurred-from"),
    occurred_to: str | None = typer.Option(None, "--occurred-to"),
    recorded_from: str | None = typer.Option(None, "--recorded-from"),
    recorded_to: str | None = typer.Option(None, "--recorded-to"),
    known_at: str | None = typer.Option(
        None, "--known-at", help="As the ledger knew it then (recorded at or before)"
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", help="What had happened by then (occurred at or before)"
    ),
    page_size: int = typer.Option(0, "--page-size", min=0, max=U32),
    page_token: str = typer.Option("", "--page-token"),
    all_pages: bool = typer.Option(False, "--all", help="Every page"),
    min_seq: int = MIN_SEQ,
    process_query: str | None = TARGET,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """A process's events in process_seq order (a subtree's in global order)."""
    _use(output)
    target = _target(process_query, timeout)
    request = _build(
        lambda: pb.GetProcessTimelineRequest(
            process_id=process_id,
            subtree=subtree,
            event_types=event_type,
            page_size=page_size,
            page_token=page_token,
            min_process_seq=min_seq,
        )
    )
    for name, window in (
        ("occurred", _window("occurred", occurred_from, occurred_to)),
        ("recorded", _window("recorded", recorded_from, recorded_to)),
    ):
        if window is not None:
            getattr(request, name).CopyFrom(window)
    for name, flag, value in (("known_at", "--known-at", known_at), ("as_of", "--as-of", as_of)):
        ts = _time(flag, value)
        if ts is not None:
            getattr(request, name).CopyFrom(ts)

    async def work(stub: pb_grpc.ProcessQueryServiceStub, md: Any) -> tuple[list[Any], str]:
        found: list[epb.StoredEvent] = []
        while True:
            page = await stub.GetProcessTimeline(request, timeout=target.timeout, metadata=md)
            found += page.events
            if not (all_pages and page.next_page_token):
                return found, page.next_page_token
            request.page_token = page.next_page_token

    events, token = _call(target, work)
    if out.mode() == Mode.json:
        out.emit_json({"events": [event_json(e) for e in events], "next_page_token": token})
        return
    out.table(f"timeline of {process_id}", EVENT_COLUMNS, [_event_row(e) for e in events])
    _more(token, "events")


@app.command()
def watch(
    process_id: str,
    subtree: bool = typer.Option(False, "--subtree", help="The process and its descendants"),
    after: int = typer.Option(0, "--after", min=0, max=U64, help="Events after this global_seq"),
    process_query: str | None = TARGET,
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        callback=out.seconds,
        help="Stop after this many seconds (default: until Ctrl-C)",
    ),
    output: Mode | None = OUTPUT,
) -> None:
    """Follow a process (or subtree): its events after --after, then live. Reconnects
    by itself from the last event shown; Ctrl-C stops."""
    _use(output)
    target = _target(process_query, None)

    async def follow(stub: pb_grpc.ProcessQueryServiceStub, md: Any) -> None:
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        cursor, pause = after, 0.2
        while True:
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return
            request = pb.WatchProcessRequest(
                process_id=process_id, subtree=subtree, after_global_seq=cursor
            )
            call = stub.WatchProcess(request, timeout=left, metadata=md)
            try:
                async for item in call:
                    e = item.event
                    if out.mode() == Mode.json:
                        out.emit_json(event_json(e))
                    else:
                        row = _event_row(e)
                        out.line(f"{row[0]}\t{row[1]}#{row[2]}\t{row[3]}\t{row[4]}\t{row[6]}")
                    cursor, pause = e.global_seq, 0.2
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and end is not None:
                    return
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                out.stderr().print(
                    f"watch: {target.service} at {target.address} went away "
                    f"({exc.details()}); resuming after {cursor}"
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                call.cancel()

    try:
        _call(target, follow, ctrl_c_stops=True)
    except KeyboardInterrupt:
        raise typer.Exit(out.OK) from None
    except BrokenPipeError:
        _quiet_stdout()
        raise typer.Exit(out.OK) from None
