"""`jetsource ctx ...`: work a context from the shell.

Commands (create, decide, subtask, link, close) go through the publisher's gRPC API;
show, list, events, watch and graph read through the query service.

Every command takes ``--timeout SECONDS`` and ``-o/--output table|json|plain``;
commands take ``-k/--idempotency-key`` (a new one is generated and printed on failure,
so a retry with ``-k`` is safe), ``--expected-version``, ``--actor``,
``--correlation-id`` and ``--causation-id``. Targets: ``--publisher`` /
``JETSOURCE_CLIENT__PUBLISHER`` and ``--query`` / ``JETSOURCE_CLIENT__QUERY``.
Exit codes: 0 ok, 1 refused, 2 usage, 3 unavailable (see ``jetsource.cli.output``).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import typer
from pydantic import ValidationError
from rich.text import Text

from jetsource._gen.context.v1 import commands_pb2, query_pb2
from jetsource.cli import output as out
from jetsource.cli.output import Mode
from jetsource.client import STATUSES, ContextClient, QueryClient
from jetsource.core import aio
from jetsource.core.ids import uuid7
from jetsource.core.settings import GrpcClientSettings, JetsourceSettings, client_tls_problems

app = typer.Typer(
    help="Work a story's context: commands via the publisher, reads via the query service.",
    no_args_is_help=True,
)

T = TypeVar("T")
# Exit code of a command stopped by Ctrl-C (128 + SIGINT), as in every group.
INTERRUPTED = 130

KEY = typer.Option(
    None,
    "--idempotency-key",
    "-k",
    help="Retry-safe key: the same key on the same context returns the original result "
    "(default: a new one, printed if the command fails or times out)",
)
EXPECTED = typer.Option(
    None, "--expected-version", min=0, max=out.U64, help="Apply only at this version"
)
ACTOR = typer.Option(None, "--actor", help="Who issues the command (default: $USER)")
CORRELATION = typer.Option(None, "--correlation-id", help="Recorded in the events' envelope")
CAUSATION = typer.Option(None, "--causation-id", help="Recorded in the events' envelope")
PUBLISHER = typer.Option(
    None,
    "--publisher",
    callback=out.target,
    help="host:port (default: JETSOURCE_CLIENT__PUBLISHER)",
)
QUERY = typer.Option(
    None, "--query", callback=out.target, help="host:port (default: JETSOURCE_CLIENT__QUERY)"
)
TIMEOUT = typer.Option(
    None,
    "--timeout",
    callback=out.seconds,
    help="Seconds to wait for the answer (default: JETSOURCE_CLIENT__TIMEOUT_S, 10)",
)
OUTPUT = typer.Option(
    None, "--output", "-o", case_sensitive=False, help="table, json or plain (as the global one)"
)


# -- connecting ------------------------------------------------------------------------


class Unreachable(Exception):
    pass


@dataclass(frozen=True)
class Target:
    service: str  # "publisher" or "query service"
    address: str
    setting: str
    flag: str
    client: GrpcClientSettings
    timeout: float

    def __post_init__(self) -> None:
        # The TLS files, checked before connecting (ctx, process): a CA file not there
        # was INTERNAL "a bug", one that was no PEM (or a key not the certificate's, a
        # certificate expired) "not reachable".
        if problems := client_tls_problems(self.client):
            out.fail(out.USAGE, "INVALID_ARGUMENT", f"bad setting: {'; '.join(problems)}")

    def unreachable(self) -> str:
        if _takes_tcp(self.address):
            # The port answers, the gRPC connection did not come up: said "not
            # reachable (set JETSOURCE_CLIENT__PUBLISHER ...)", the address that was right.
            tls_on = self.client.tls.active
            return (
                f"{self.service} at {self.address} takes connections but no gRPC "
                "connection came up: "
                + (
                    "its certificate is not trusted or not for this name "
                    "(JETSOURCE_CLIENT__TLS__CA_FILE, JETSOURCE_CLIENT__SERVER_NAME), it "
                    "refused this client's certificate (JETSOURCE_CLIENT__TLS__CERT_FILE / "
                    "__KEY_FILE), or it does not speak TLS"
                    if tls_on
                    else "if it speaks TLS, set JETSOURCE_CLIENT__TLS__ENABLED=true (and "
                    "JETSOURCE_CLIENT__TLS__CA_FILE)"
                )
                + f"; or it is not the {self.service}, or does not answer "
                f"({self.setting} or {self.flag})"
            )
        tls = "; TLS is on: check JETSOURCE_CLIENT__TLS__*" if self.client.tls.active else ""
        return (
            f"{self.service} at {self.address} is not reachable "
            f"(set {self.setting} or {self.flag}{tls})"
        )


def _takes_tcp(address: str, timeout_s: float = 0.5) -> bool:
    """Whether ``host:port`` accepts a TCP connection now."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _settings() -> JetsourceSettings:
    try:
        return JetsourceSettings.load()
    except ValidationError as exc:
        fields = out.settings_fields(exc)
        named = {"field": fields[0]} if fields else {}
        out.fail(out.USAGE, "INVALID_ARGUMENT", out.settings_message(exc), **named)


def _local(host: str, port: int) -> str:
    """The service's own bind address as a client target (wildcards -> loopback)."""
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::', '[::]') else host}:{port}"


def _port_from_env(service: str, default: int) -> int:
    try:
        return int(os.environ.get(f"JETSOURCE_{service.upper()}__GRPC_PORT", default))
    except ValueError:
        return default


def _target(kind: str, flag: str | None, timeout: float | None) -> Target:
    settings = _settings()
    client = settings.client
    if kind == "publisher":
        from jetsource.publisher.settings import PublisherOptions

        fallback = _local(
            os.environ.get("JETSOURCE_PUBLISHER__GRPC_HOST", PublisherOptions().grpc_host),
            _port_from_env("publisher", PublisherOptions().grpc_port),
        )
        address = flag or client.publisher or fallback
        return Target(
            "publisher",
            address,
            "JETSOURCE_CLIENT__PUBLISHER",
            "--publisher",
            client,
            client.timeout_s if timeout is None else timeout,
        )
    # The query service's settings live with the context domain (all domains load).
    from jetsource.query.settings import QueryOptions

    fallback = _local(
        os.environ.get("JETSOURCE_QUERY__GRPC_HOST", QueryOptions().grpc_host),
        _port_from_env("query", QueryOptions().grpc_port),
    )
    return Target(
        "query service",
        flag or client.query or fallback,
        "JETSOURCE_CLIENT__QUERY",
        "--query",
        client,
        client.timeout_s if timeout is None else timeout,
    )


async def _connect(channel: grpc.aio.Channel, target: Target) -> None:
    """Wait until the channel is connected: a refused connection fails at once, an
    unanswered one after ``connect_timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + target.client.connect_timeout_s
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state in (
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.SHUTDOWN,
        ):
            raise Unreachable(target.unreachable())
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise Unreachable(target.unreachable())
        try:
            await aio.wait_for(channel.wait_for_state_change(state), remaining)
        except TimeoutError as exc:
            raise Unreachable(target.unreachable()) from exc
        state = channel.get_state(try_to_connect=True)


def _channel(client: ContextClient | QueryClient) -> grpc.aio.Channel:
    # The typed clients own their channel; the CLI only watches its connectivity.
    channel: grpc.aio.Channel = client._channel
    return channel


def _run(
    target: Target,
    work: Callable[[], Coroutine[Any, Any, T]],
    key: str | None = None,
    *,
    ctrl_c_stops: bool = False,
) -> T:
    """Run ``work``; map every failure to a message on stderr and an exit code.
    ``ctrl_c_stops``: Ctrl-C is the caller's way to stop (``watch``: exit 0), so
    KeyboardInterrupt goes on to it instead of being answered CANCELLED."""
    try:
        return aio.run(work())
    except KeyboardInterrupt:
        if ctrl_c_stops:
            raise
        hint = None
        if key:  # as for no answer: it may have reached the publisher
            hint = (
                f"the command may have been applied: retry safely with -k {key} (the same "
                "key returns the original result)"
            )
        out.fail(
            INTERRUPTED,
            "CANCELLED",
            "stopped (Ctrl-C) before an answer came",
            idempotency_key=key,
            target=target.address,
            hint=hint,
        )
    except UnicodeEncodeError as exc:  # building the request: nothing was sent
        out.fail(out.USAGE, "INVALID_ARGUMENT", out.not_utf8(exc), idempotency_key=key)
    except Unreachable as exc:
        out.fail(
            out.UNAVAILABLE,
            "UNAVAILABLE",
            str(exc),
            idempotency_key=key,
            target=target.address,
            hint=f"idempotency key: {key} (not sent)" if key else None,
        )
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        status = code.name if code is not None else "UNKNOWN"
        details = exc.details() or status
        exit_code = out.exit_code(code, details) if code is not None else out.REFUSED
        hint = None
        if key and exit_code == out.UNAVAILABLE:
            hint = (
                f"no answer from the {target.service} at {target.address} within "
                f"{target.timeout:g} s: the command may have been applied. Retry safely with "
                f"-k {key} (the same key returns the original result)"
            )
        elif key:
            hint = f"idempotency key: {key}"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            hint = f"no answer from the {target.service} within {target.timeout:g} s (--timeout)"
        out.fail(
            exit_code,
            status,
            details,
            idempotency_key=key,
            target=target.address,
            hint=hint,
        )


# -- commands through the publisher ----------------------------------------------------


@dataclass
class Common:
    key: str | None
    expected: int | None
    actor: str | None
    correlation: str | None
    causation: str | None
    publisher: str | None
    timeout: float | None
    output: Mode | None


def _command(
    common: Common, call: Callable[[ContextClient, dict[str, Any]], Awaitable[Any]]
) -> None:
    _use(common.output)
    target = _target("publisher", common.publisher, common.timeout)
    key = common.key if common.key is not None else uuid7()
    options: dict[str, Any] = {
        "idempotency_key": key,
        "expected_version": common.expected,
        "correlation_id": common.correlation or "",
        "causation_id": common.causation or "",
    }

    async def work() -> commands_pb2.CommandResult:
        async with ContextClient(
            target.address,
            timeout=target.timeout,
            actor=common.actor or _user(),
            security=target.client,
        ) as client:
            await _connect(_channel(client), target)
            result: commands_pb2.CommandResult = await call(client, options)
            return result

    result = _run(target, work, key)
    if out.mode() == Mode.json:
        out.emit_json({**out.data(result), "idempotency_key": key})
        return
    note = " (duplicate: original result)" if result.duplicate else ""
    out.line(
        f"{result.context_id} at version {result.version}, stream sequence "
        f"{list(result.stream_sequences)}{note}"
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _use(override: Mode | None) -> None:
    if override is not None:
        out.set_mode(override)


@app.command()
def create(
    context_id: str,
    title: str = typer.Option(..., "--title"),
    description: str = typer.Option("", "--description"),
    tag: list[str] = typer.Option([], "--tag"),
    key: str | None = KEY,
    expected: int | None = EXPECTED,
    actor: str | None = ACTOR,
    correlation: str | None = CORRELATION,
    causation: str | None = CAUSATION,
    publisher: str | None = PUBLISHER,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """Create a context for a story."""
    common = Common(key, expected, actor, correlation, causation, publisher, timeout, output)
    _command(common, lambda c, o: c.create_context(context_id, title, description, tag, **o))


def _only(output: Mode | None, what: str, given: dict[str, bool], *allowed: str) -> None:
    """A usage error for options given that ``what`` does not take (they would be
    dropped without a word)."""
    extra = [flag for flag, present in given.items() if present and flag not in allowed]
    if extra:
        _use(output)
        out.fail(
            out.USAGE,
            "INVALID_ARGUMENT",
            f"{', '.join(extra)} cannot be used with {what}",
            field=extra[0],
        )


@app.command()
def decide(
    context_id: str,
    decision_id: str,
    title: str = typer.Option("", "--title"),
    body: str = typer.Option("", "--body"),
    rationale: str = typer.Option("", "--rationale"),
    affects: list[str] = typer.Option([], "--affects"),
    revise: bool = typer.Option(False, "--revise", help="Revise an existing decision"),
    superseded_by: str | None = typer.Option(None, "--superseded-by", help="Supersede it"),
    reason: str = typer.Option("", "--reason"),
    key: str | None = KEY,
    expected: int | None = EXPECTED,
    actor: str | None = ACTOR,
    correlation: str | None = CORRELATION,
    causation: str | None = CAUSATION,
    publisher: str | None = PUBLISHER,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """Add a decision; or --revise it; or supersede it with --superseded-by NEW."""
    common = Common(key, expected, actor, correlation, causation, publisher, timeout, output)
    given = {
        "--title": bool(title),
        "--body": bool(body),
        "--rationale": bool(rationale),
        "--affects": bool(affects),
        "--revise": revise,
        "--reason": bool(reason),
    }
    if superseded_by:
        _only(output, "--superseded-by", given, "--reason")
    elif revise:
        _only(output, "--revise", given, "--title", "--body", "--rationale", "--revise")
    else:
        _only(output, "adding a decision", given, "--title", "--body", "--rationale", "--affects")
    if superseded_by:
        _command(
            common,
            lambda c, o: c.supersede_decision(context_id, decision_id, superseded_by, reason, **o),
        )
    elif revise:
        _command(
            common,
            lambda c, o: c.revise_decision(context_id, decision_id, title, body, rationale, **o),
        )
    else:
        _command(
            common,
            lambda c, o: c.add_decision(
                context_id, decision_id, title, body, rationale, affects, **o
            ),
        )


@app.command()
def subtask(
    context_id: str,
    subtask_id: str,
    title: str | None = typer.Option(None, "--title", help="Given: add the subtask"),
    description: str = typer.Option("", "--description"),
    status: str | None = typer.Option(None, "--status", help=", ".join(STATUSES)),
    assignee: str | None = typer.Option(None, "--assignee"),
    progress: int | None = typer.Option(None, "--progress", min=0, max=100),
    key: str | None = KEY,
    expected: int | None = EXPECTED,
    actor: str | None = ACTOR,
    correlation: str | None = CORRELATION,
    causation: str | None = CAUSATION,
    publisher: str | None = PUBLISHER,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """Add a subtask (with --title) or update its status, assignee or progress."""
    common = Common(key, expected, actor, correlation, causation, publisher, timeout, output)
    if status is not None and status not in STATUSES:
        _use(output)
        out.fail(
            out.USAGE,
            "INVALID_ARGUMENT",
            f"--status must be one of {', '.join(STATUSES)}",
            field="--status",
        )
    given = {
        "--description": bool(description),
        "--status": status is not None,
        "--progress": progress is not None,
    }
    if title is not None:
        _only(output, "--title (adding a subtask)", given, "--description")
    else:
        _only(output, "an update (no --title)", given, "--status", "--progress")
    if title is not None:
        _command(
            common,
            lambda c, o: c.add_subtask(
                context_id, subtask_id, title, description, assignee or "", **o
            ),
        )
    else:
        _command(
            common,
            lambda c, o: c.update_subtask(context_id, subtask_id, status, assignee, progress, **o),
        )


@app.command()
def link(
    context_id: str,
    from_id: str,
    to_id: str,
    key: str | None = KEY,
    expected: int | None = EXPECTED,
    actor: str | None = ACTOR,
    correlation: str | None = CORRELATION,
    causation: str | None = CAUSATION,
    publisher: str | None = PUBLISHER,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """Record that FROM_ID depends on TO_ID (decisions or subtasks)."""
    common = Common(key, expected, actor, correlation, causation, publisher, timeout, output)
    _command(common, lambda c, o: c.link_dependency(context_id, from_id, to_id, **o))


@app.command()
def close(
    context_id: str,
    reason: str = typer.Option("", "--reason"),
    key: str | None = KEY,
    expected: int | None = EXPECTED,
    actor: str | None = ACTOR,
    correlation: str | None = CORRELATION,
    causation: str | None = CAUSATION,
    publisher: str | None = PUBLISHER,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """Close the context: it accepts no more changes."""
    common = Common(key, expected, actor, correlation, causation, publisher, timeout, output)
    _command(common, lambda c, o: c.close_context(context_id, reason, **o))


# -- reads through the query service ---------------------------------------------------


def _query(
    query: str | None,
    timeout: float | None,
    work: Callable[[QueryClient], Awaitable[T]],
) -> T:
    target = _target("query", query, timeout)

    async def go() -> T:
        async with QueryClient(
            target.address, timeout=target.timeout, security=target.client
        ) as client:
            await _connect(_channel(client), target)
            return await work(client)

    return _run(target, go)


def _status_name(value: Any) -> str:
    return query_pb2.ContextStatus.Name(value).removeprefix("CONTEXT_STATUS_").lower()


SUBTASK_STATUS = {v: k for k, v in STATUSES.items()}


def _sorted_view(view: dict[str, Any]) -> dict[str, Any]:
    view["decisions"].sort(key=lambda d: out.natural_key(d["id"]))
    view["subtasks"].sort(key=lambda t: out.natural_key(t["id"]))
    view["dependencies"].sort(
        key=lambda d: (out.natural_key(d["from_id"]), out.natural_key(d["to_id"]))
    )
    return view


def _at(text: str) -> tuple[str, int]:
    """``--at``: ("version", N) for a version (1 up to the largest a context can have)
    or ("time", ns) for an RFC 3339 time; a bad one is a usage error naming --at."""
    digits = text.strip()
    if digits.lstrip("-").isascii() and digits.lstrip("-").isdigit():
        version = int(digits) if len(digits) <= 20 else 0  # int() refuses 4300+ digits
        if not 1 <= version <= out.I64:
            out.fail(
                out.USAGE,
                "INVALID_ARGUMENT",
                f"--at {text!r}: a version is between 1 and {out.I64}",
                field="--at",
            )
        return "version", version
    return "time", out.time_option("--at", text)


@app.command()
def show(
    context_id: str,
    at: str | None = typer.Option(
        None,
        "--at",
        help="A version (e.g. 12) or an RFC 3339 time (2026-11-23T10:00:00Z, or "
        "with an offset: 2026-11-23T11:00:00+01:00): "
        "the context as it was then",
    ),
    min_version: int = typer.Option(
        0,
        "--min-version",
        min=0,
        max=out.I64,
        help="Wait (within --timeout) until the read model has it",
    ),
    pager: bool | None = typer.Option(
        None,
        "--pager/--no-pager",
        help="Page long table output (default: when taller than the terminal)",
    ),
    query: str | None = QUERY,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """Show a context through the query service: now, or at a version or time."""
    _use(output)
    point = None if at is None else _at(at)

    async def load(q: QueryClient) -> tuple[dict[str, Any], str]:
        if point is None:
            now = await q.get_context(context_id, min_version=min_version)
            note = "now" + (", read model behind" if now.behind else "")
            return out.data(now), note
        r: query_pb2.GetContextAtVersionResponse | query_pb2.GetContextAtTimeResponse
        if point[0] == "version":
            r = await q.at_version(context_id, point[1])
        else:
            r = await q.at_time(context_id, point[1])
        source = (
            f"from snapshot v{r.snapshot_version} + {out.count(r.events_folded, 'event')}"
            if r.snapshot_version
            else f"folded from {out.count(r.events_folded, 'event')}"
        )
        return out.data(r), f"at {at} ({source})"

    response, when = _query(query, timeout, lambda q: load(q))
    view = _sorted_view(response["context"])
    if out.mode() == Mode.json:
        out.emit_json(response)
        return
    rows = len(view["decisions"]) + len(view["subtasks"]) + len(view["dependencies"])
    console = out.stdout()
    use_pager = pager
    if use_pager is None:
        use_pager = (
            out.mode() == Mode.table
            and sys.stdout.isatty()
            and 14 + 2 * rows > shutil.get_terminal_size().lines
        )
    with console.pager() if use_pager else contextlib.nullcontext():
        _print_view(view, when)


def _print_view(view: dict[str, Any], when: str) -> None:
    closed = view["status"] == "CONTEXT_STATUS_CLOSED"
    header = Text.assemble(
        (out.printable(view["title"]), "bold"),
        f" ({view['context_id']}, version {view['version']}, {out.printable(when)})",
        " [closed]" if closed else "",
    )
    out.line(header)
    pairs: list[tuple[str, Any]] = [
        ("status", _status_name(query_pb2.ContextStatus.Value(view["status"]))),
        ("description", view["description"]),
        ("tags", view["tags"]),
        ("created by", view["created_by"]),
    ]
    if closed:
        pairs.append(("close reason", view["close_reason"]))
    out.fields(pairs)
    out.table(
        "decisions",
        ("id", "title", "status", "body", "rationale", "affects", "revisions", "author"),
        (
            (
                d["id"],
                d["title"],
                f"superseded by {d['superseded_by']}" if d["superseded_by"] else "active",
                d["body"],
                d["rationale"],
                d["affects"],
                d["revisions"],
                d["author"],
            )
            for d in view["decisions"]
        ),
    )
    out.table(
        "subtasks",
        ("id", "title", "status", "assignee", "progress", "description", "note"),
        (
            (
                t["id"],
                t["title"],
                t["status"].removeprefix("SUBTASK_STATUS_").lower(),
                t["assignee"],
                f"{t['progress']}%",
                t["description"],
                t["status_note"],
            )
            for t in view["subtasks"]
        ),
    )
    out.table(
        "dependencies",
        ("from", "depends on"),
        ((d["from_id"], d["to_id"]) for d in view["dependencies"]),
    )


STATUS_FILTER = {
    "any": query_pb2.CONTEXT_STATUS_UNSPECIFIED,
    "open": query_pb2.CONTEXT_STATUS_OPEN,
    "closed": query_pb2.CONTEXT_STATUS_CLOSED,
}


async def _pages(
    fetch: Callable[[str], Awaitable[Any]], field: str, token: str, every: bool
) -> tuple[list[Any], str]:
    items: list[Any] = []
    while True:
        page = await fetch(token)
        items.extend(getattr(page, field))
        token = page.next_page_token
        if not every or not token:
            return items, token


def _more(token: str, what: str) -> None:
    if token and out.mode() != Mode.json:
        out.stderr().print(f"more {what}: --page-token {token} (or --all)")


@app.command("list")
def list_contexts(
    status: str = typer.Option("any", "--status", help="open, closed or any"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Contexts per page"),
    page_token: str = typer.Option("", "--page-token", help="From a previous page"),
    every: bool = typer.Option(False, "--all", help="Follow every page"),
    query: str | None = QUERY,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """List contexts, most recently updated first."""
    _use(output)
    if status not in STATUS_FILTER:
        out.fail(
            out.USAGE,
            "INVALID_ARGUMENT",
            "--status must be one of open, closed, any",
            field="--status",
        )

    async def work(q: QueryClient) -> tuple[list[Any], str]:
        return await _pages(
            lambda t: q.list_contexts(STATUS_FILTER[status], limit, t),
            "contexts",
            page_token,
            every,
        )

    contexts, token = _query(query, timeout, work)
    if out.mode() == Mode.json:
        out.emit_json({"contexts": [out.data(c) for c in contexts], "next_page_token": token})
        return
    out.table(
        "",
        ("context", "title", "status", "version", "updated"),
        (
            (
                c.context_id,
                c.title,
                _status_name(c.status),
                c.version,
                out.timestamp(c.updated_at) or "",
            )
            for c in contexts
        ),
    )
    _more(token, "contexts")


def _payload(event: dict[str, Any]) -> str:
    body = event.get("event") or {}
    for value in body.values():
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return ""


def _event_row(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["version"],
        e["event_type"],
        e["recorded_at"] or "",
        e["metadata"].get("actor", ""),
        e["correlation_id"],
        e["causation_id"],
        _payload(e),
    )


EVENT_COLUMNS = ("version", "type", "recorded", "actor", "correlation", "causation", "payload")


@app.command()
def events(
    context_id: str,
    from_version: int = typer.Option(1, "--from-version", min=0, max=out.I64),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="Events per page"),
    page_token: str = typer.Option("", "--page-token", help="From a previous page"),
    every: bool = typer.Option(False, "--all", help="Follow every page"),
    query: str | None = QUERY,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """List a context's events (envelope and payload), oldest first."""
    _use(output)

    async def work(q: QueryClient) -> tuple[list[Any], str]:
        return await _pages(
            lambda t: q.list_events(context_id, from_version, limit, t), "events", page_token, every
        )

    found, token = _query(query, timeout, work)
    rows = [out.data(e) for e in found]
    if out.mode() == Mode.json:
        out.emit_json({"events": rows, "next_page_token": token})
        return
    out.table("", EVENT_COLUMNS, (_event_row(e) for e in rows))
    _more(token, "events")


@app.command()
def graph(
    context_id: str,
    depth: int = typer.Option(2, "--depth", min=0, max=out.I32, help="Hops from the root"),
    root: str = typer.Option("", "--root", help="A decision or subtask id (default: the story)"),
    query: str | None = QUERY,
    timeout: float | None = TIMEOUT,
    output: Mode | None = OUTPUT,
) -> None:
    """The decision graph around the story (or one decision or subtask)."""
    _use(output)
    response = _query(query, timeout, lambda q: q.graph(context_id, depth, root))
    result = out.data(response)
    result["nodes"].sort(key=lambda n: (n["distance"], n["kind"], out.natural_key(n["id"])))
    result["edges"].sort(
        key=lambda e: (e["type"], out.natural_key(e["from_id"]), out.natural_key(e["to_id"]))
    )
    if out.mode() == Mode.json:
        out.emit_json(result)
        return
    out.line(f"{context_id} graph at version {result['version']}, depth {depth}")
    out.table(
        "nodes",
        ("id", "kind", "title", "status", "distance"),
        (
            (
                n["id"],
                n["kind"].removeprefix("GRAPH_NODE_KIND_").lower(),
                n["title"],
                n["status"],
                n["distance"],
            )
            for n in result["nodes"]
        ),
    )
    out.table(
        "edges",
        ("type", "from", "to"),
        ((e["type"], e["from_id"], e["to_id"]) for e in result["edges"]),
    )


@app.command()
def watch(
    context_id: str,
    from_version: int = typer.Option(
        1, "--from-version", min=0, max=out.I64, help="First version to show"
    ),
    query: str | None = QUERY,
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        callback=out.seconds,
        help="Stop after this many seconds (default: run until Ctrl-C)",
    ),
    output: Mode | None = OUTPUT,
) -> None:
    """Follow a context: its events from --from-version, then live (one line each;
    JSON lines with -o json). Reconnects by itself; Ctrl-C stops."""
    _use(output)
    target = _target("query", query, None)
    stop_at = timeout

    async def follow() -> None:
        loop = asyncio.get_running_loop()
        end = None if stop_at is None else loop.time() + stop_at
        async with QueryClient(target.address, security=target.client) as q:
            await _connect(_channel(q), target)
            version = from_version
            pause = 0.2
            while True:
                left = None if end is None else end - loop.time()
                if left is not None and left <= 0:
                    return
                try:
                    async for change in _stream(q, context_id, version, left):
                        _print_change(change)
                        version = change.event.version + 1
                        pause = 0.2
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and end is not None:
                        return
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    out.stderr().print(
                        f"watch: {target.service} at {target.address} went away "
                        f"({exc.details()}); resuming from version {version}"
                    )
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)

    try:
        _run(target, follow, ctrl_c_stops=True)
    except KeyboardInterrupt:
        raise typer.Exit(out.OK) from None
    except BrokenPipeError:
        _quiet_stdout()
        raise typer.Exit(out.OK) from None


async def _stream(
    q: QueryClient, context_id: str, version: int, timeout: float | None
) -> AsyncIterator[query_pb2.WatchContextResponse]:
    call = q.watch(context_id, from_version=version, timeout=timeout)
    try:
        async for change in call:
            yield change
    finally:
        call.cancel()


def _print_change(change: query_pb2.WatchContextResponse) -> None:
    event = out.data(change.event)
    if out.mode() == Mode.json:
        out.emit_json({"event": event, "state": _sorted_view(out.data(change.state))})
        return
    row = _event_row(event)
    text = "\t".join(str(v) for v in (row[0], row[1], row[2], row[3], row[6]))
    out.line(Text(out.printable(text)))


def _quiet_stdout() -> None:
    """stdout's reader left (``| head``): nothing more to write, and no error at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
