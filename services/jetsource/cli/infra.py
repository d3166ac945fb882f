"""`jetsource infra up | status | down` and the top-level `jetsource up`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from jetsource.cli import output
from jetsource.core import aio
from jetsource.core.settings import GrpcClientSettings, JetsourceSettings
from jetsource.devstack.servers import ServerError
from jetsource.devstack.stack import LocalStack, ServerStatus

# The services' launcher loads every domain: imported by the commands that use it.
if TYPE_CHECKING:
    from jetsource.devstack.services import ServiceStatus

app = typer.Typer(
    help="Local servers (NATS, Valkey, graph) from Python wheels.", no_args_is_help=True
)


def _stack() -> LocalStack:
    return LocalStack(JetsourceSettings.load())


HOME_SETTING = "JETSOURCE_DEVSTACK__HOME"


@contextlib.contextmanager
def _home_usable(stack: LocalStack) -> Iterator[None]:
    """A data folder that cannot be written (read-only, a file on the way, a full
    disk) is said as such, naming the folder and the setting that moves it: exit 1,
    not ``INTERNAL: unexpected NotADirectoryError ... (a bug)``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise
        output.fail(
            output.REFUSED,
            "refused",
            f"the data folder {stack.home} cannot be used: {exc.strerror or exc} "
            f"({exc.filename}); set {HOME_SETTING} to a folder this user can write",
            field=HOME_SETTING,
        )


def _health(ok: bool) -> str:
    return "healthy" if ok else "down"


def _rows(
    statuses: list[ServerStatus], services: list[ServiceStatus] | None = None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # JSON: ``pid`` a number, or null when none runs (or the server is external:
    # ``external`` true); it was a string ("17129", "-", "external").
    for s in statuses:
        out.append(
            {
                "name": s.name,
                "kind": "server",
                "address": s.address,
                "health": _health(s.healthy),
                "healthy": s.healthy,
                "version": s.version,
                "pid": s.pid or None,
                "external": not s.managed,
                "detail": s.detail,
            }
        )
    for v in services or []:
        out.append(
            {
                "name": v.name,
                "kind": "service",
                "address": v.address,
                "health": _health(v.healthy) if v.started else "not started",
                "healthy": v.healthy,
                "version": "",
                "pid": v.pid or None,
                "detail": v.detail if v.started else "",
            }
        )
    return out


def _pid_cell(row: dict[str, Any]) -> str:
    if row["pid"]:
        return str(row["pid"])
    return "external" if row.get("external") else "-"


def _show(statuses: list[ServerStatus], services: list[ServiceStatus] | None = None) -> None:
    rows = _rows(statuses, services)
    if output.mode() == output.Mode.json:
        output.emit_json(
            {
                "servers": [r for r in rows if r["kind"] == "server"],
                "services": [r for r in rows if r["kind"] == "service"],
            }
        )
        return
    columns = ("name", "address", "health", "version", "pid", "detail")
    output.table(
        "jetsource local servers and services",
        columns,
        [[_pid_cell(r) if c == "pid" else r[c] for c in columns] for r in rows],
    )


def _report(statuses: list[ServerStatus], services: list[ServiceStatus] | None = None) -> None:
    """Show the table; exit 1 unless every server and every started service is healthy
    (a service `jetsource up` never started is listed, not counted)."""
    _show(statuses, services)
    if not all(s.healthy for s in statuses) or not all(
        v.healthy for v in services or [] if v.started
    ):
        raise typer.Exit(1)


def _say(text: str) -> None:
    """Progress lines: stdout, except with --output json (stderr, so stdout stays JSON)."""
    if output.mode() == output.Mode.json:
        output.stderr().print(Text(text))
    else:
        output.line(text)


def _start_servers(stack: LocalStack) -> list[ServerStatus]:
    try:
        with _home_usable(stack), output.stderr().status("starting what is down..."):
            result = stack.up()
    except ServerError as exc:
        output.fail(output.REFUSED, "refused", f"failed to start: {exc}")
    external = [s.name for s in result.statuses if not s.managed]
    if len(external) == len(result.statuses):
        # It said "local servers already running" of external servers, down ones too.
        _say(f"no local server to start: {', '.join(external)} external")
    elif result.already_running:
        _say("local servers already running")
    else:
        _say(f"started: {', '.join(result.started)}")
    return result.statuses


# The table as one JSON document (as the global --output json; -o/--output json too:
# cli.lazy adds the alias, as for every command that prints data).
JSON = typer.Option(False, "--json", help="JSON on stdout, errors too (as --output json)")


def _json(flag: bool) -> None:
    if flag:
        output.set_mode(output.Mode.json)


@app.command()
def up(as_json: bool = JSON) -> None:
    """Start the local servers that are down (all of them the first time), in the
    background; data stays under .jetsource/. Servers that run are left alone."""
    _json(as_json)
    stack = _stack()
    statuses = _start_servers(stack)
    _report(statuses)


@app.command()
def status(as_json: bool = JSON) -> None:
    """Each server and service: address, health, version, pid; for NATS, JetStream's
    storage and any condition refusing writes. Exit 1 unless all are healthy."""
    from jetsource.devstack.services import LocalServices

    _json(as_json)
    stack = _stack()
    _report(stack.status(), LocalServices(stack.home).status())


@app.command()
def down() -> None:
    """Stop the services, then the local servers (external servers are left alone)."""
    from jetsource.devstack.services import LocalServices

    stack = _stack()
    with _home_usable(stack):
        stopped = LocalServices(stack.home).down() + stack.down()
    _say(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def up_all(
    demo: bool = typer.Option(
        True, "--demo/--no-demo", help="Drive a demo story through the services at the end."
    ),
    as_json: bool = JSON,
) -> None:
    """Start what is down of the local system (servers, then services) and show it
    working. Run it again after anything died: it restarts exactly that."""
    from jetsource.devstack.services import LocalServices

    _json(as_json)
    stack = _stack()
    statuses = _start_servers(stack)
    _report(statuses)
    try:
        with _home_usable(stack), output.stderr().status("starting services..."):
            services = LocalServices(stack.home).up()
    except ServerError as exc:
        output.fail(output.REFUSED, "refused", f"failed to start services: {exc}")
    for s in services:
        _say(f"service {s.name}: {s.address} {_health(s.healthy)} (pid {s.pid})")
    if not all(s.healthy for s in services):
        raise typer.Exit(1)
    if demo:
        aio.run(_demo(stack.settings))
        aio.run(_demo_process_tree(stack.settings))


def down_all() -> None:
    """Stop the services, then the local servers."""
    down()


def demo_client(settings: JetsourceSettings) -> GrpcClientSettings:
    """How the demo reaches the services just started: ``JETSOURCE_CLIENT__*``, as the
    CLI's commands do, and when that sends no token, the first of the services'
    ``JETSOURCE_GRPC__AUTH_TOKENS`` (they were started from the same environment and
    take only those): with the tokens set in the shell, the demo sent none and failed
    UNAUTHENTICATED."""
    client = settings.client
    token = client.token.get_secret_value() if client.token is not None else ""
    if not token and settings.grpc.auth_tokens:
        client = client.model_copy(update={"token": settings.grpc.auth_tokens[0]})
    return client


async def _demo(settings: JetsourceSettings) -> None:
    """A story through the publisher's gRPC API, then read back from the event store."""
    from jetsource.client import ContextClient
    from jetsource.domains.context.events import registry
    from jetsource.eventstore.bootstrap import open_event_store
    from jetsource.publisher.settings import PublisherSettings

    demo = f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    target = PublisherSettings.load().publisher.target()
    security = demo_client(settings)
    async with ContextClient(target, actor="jetsource up", security=security) as client:
        await client.create_context(demo, "jetsource is up", tags=["demo"])
        await client.add_decision(demo, "d1", "Record context as events", rationale="replayable")
        await client.add_subtask(demo, "s1", "Try `jetsource ctx show " + demo + "`")
        last = await client.link_dependency(demo, "s1", "d1")
    nc, store = await open_event_store(settings, registry)
    try:
        events = await store.read_aggregate(demo)
        info = await store.stream_info()
    finally:
        await store.close()
        await nc.close()
    _say(
        f"publisher at {target}: story {demo!r} reached version {last.version}; read back "
        f"{', '.join(e.event_type for e in events)}; stream {settings.eventstore.stream} "
        f"holds {output.count(info['state']['messages'], 'event')}"
    )
    await _demo_read_models(demo, last.version, security)


async def _demo_process_tree(settings: JetsourceSettings) -> None:
    """A small process tree through the observer (the Python SDK)."""
    from jetsource.devstack.process_demo import record_demo_tree
    from jetsource.observer.settings import ObserverSettings

    target = ObserverSettings.load().observer.target()
    security = demo_client(settings)
    root, events = await record_demo_tree(target, security)
    _say(
        f"observer at {target}: demo process tree {root!r} recorded through the SDK "
        f"({output.count(events, 'event')}); try `jetsource process tree {root}`"
    )
    await _demo_process_read(root, events, security)


async def _demo_process_read(root: str, events: int, security: GrpcClientSettings) -> None:
    """The demo tree read back through the process query service (its read models)."""
    from jetsource._gen.process.v1 import query_pb2 as pq
    from jetsource._gen.process.v1 import query_pb2_grpc as pq_grpc
    from jetsource.client import open_channel
    from jetsource.processquery.settings import ProcessQuerySettings

    target = ProcessQuerySettings.load().process_query.target()
    started = time.monotonic()
    channel, metadata = open_channel(target, security)
    async with channel:
        stub = pq_grpc.ProcessQueryServiceStub(channel)
        request = pq.ListProcessesRequest(root_process_id=root, page_size=1000)
        listed = await stub.ListProcesses(request, timeout=10, metadata=metadata)
        while sum(p.event_count for p in listed.processes) < events:
            if time.monotonic() - started > 30:
                raise RuntimeError(f"the process query service at {target} did not show {root}")
            await asyncio.sleep(0.05)
            listed = await stub.ListProcesses(request, timeout=10, metadata=metadata)
    statuses = sorted(
        {
            pq.ProcessStatus.Name(p.status).removeprefix("PROCESS_STATUS_").lower()
            for p in listed.processes
        }
    )
    _say(
        f"process query at {target}: {output.count(len(listed.processes), 'process')} "
        f"of {root!r} in the "
        f"registry after {1000 * (time.monotonic() - started):.0f} ms ({', '.join(statuses)})"
    )


async def _demo_read_models(demo: str, version: int, security: GrpcClientSettings) -> None:
    """Read the story back through the query service: read-your-writes from the
    projector's Valkey model, the past from the stream, the graph."""
    import grpc

    from jetsource.client import QueryClient
    from jetsource.query.settings import QuerySettings

    target = QuerySettings.load().query.target()
    started = time.monotonic()
    async with QueryClient(target, timeout=30, security=security) as q:
        now = await q.get_context(demo, min_version=version)
        waited = 1000 * (time.monotonic() - started)
        first = await q.at_version(demo, 1)
        graph = None
        while time.monotonic() - started < 30:
            try:
                graph = await q.graph(demo, depth=2)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
            if graph is not None and graph.version >= version:
                break
            await asyncio.sleep(0.05)
    if now.behind or graph is None:
        output.fail(output.REFUSED, "refused", "the read models did not show the story within 30 s")
    c = now.context
    _say(
        f"query at {target}: GetContext(min_version={version}) answered version {c.version} "
        f"({output.count(len(c.decisions), 'decision')}, "
        f"{output.count(len(c.subtasks), 'subtask')}) from the read model in "
        f"{waited:.0f} ms; GetContextAtVersion(1): {first.context.title!r} with "
        f"{output.count(len(first.context.decisions), 'decision')}; graph: "
        + ", ".join(f"{e.type} {e.from_id}->{e.to_id}" for e in graph.edges)
    )
