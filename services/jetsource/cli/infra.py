"""`jetsource infra up | status | down` and the top-level `jetsource up`."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.table import Table

from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.servers import ServerError
from jetsource.devstack.services import LocalServices
from jetsource.devstack.stack import AlreadyRunningError, LocalStack, ServerStatus

app = typer.Typer(
    help="Local servers (NATS, Valkey, graph) from Python wheels.", no_args_is_help=True
)
console = Console()


def _stack() -> LocalStack:
    return LocalStack(JetsourceSettings.load())


def _table(statuses: list[ServerStatus]) -> Table:
    table = Table(title="jetsource local servers")
    for column in ("server", "address", "health", "version", "pid", "detail"):
        table.add_column(column)
    for s in statuses:
        health = "[green]healthy[/green]" if s.healthy else "[red]down[/red]"
        pid = str(s.pid) if s.pid else ("external" if not s.managed else "-")
        table.add_row(s.name, s.address, health, s.version, pid, s.detail)
    return table


def _report(statuses: list[ServerStatus]) -> None:
    console.print(_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@app.command()
def up() -> None:
    """Start the local servers in the background; data stays under .jetsource/."""
    stack = _stack()
    try:
        with console.status("starting local servers..."):
            statuses = stack.up()
    except AlreadyRunningError as exc:
        console.print(f"[yellow]{exc}[/yellow]")
        raise typer.Exit(1) from exc
    except ServerError as exc:
        console.print(f"[red]failed to start: {exc}[/red]")
        raise typer.Exit(1) from exc
    _report(statuses)


@app.command()
def status() -> None:
    """Show each server, its address, health and version; exit 1 unless all are healthy."""
    _report(_stack().status())


@app.command()
def down() -> None:
    """Stop the services, then the local servers (external servers are left alone)."""
    stack = _stack()
    stopped = LocalServices(stack.home).down() + stack.down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def up_all() -> None:
    """Start the whole local system (servers, then services) and show it working."""
    stack = _stack()
    if stack.running():
        console.print("local servers already running")
        _report(stack.status())
    else:
        up()
    try:
        with console.status("starting services..."):
            services = LocalServices(stack.home).up()
    except ServerError as exc:
        console.print(f"[red]failed to start services: {exc}[/red]")
        raise typer.Exit(1) from exc
    for s in services:
        health = "[green]healthy[/green]" if s.healthy else "[red]down[/red]"
        console.print(f"service {s.name}: {s.address} {health} (pid {s.pid})")
    if not all(s.healthy for s in services):
        raise typer.Exit(1)
    asyncio.run(_demo(stack.settings))


def down_all() -> None:
    """Stop the services, then the local servers."""
    down()


async def _demo(settings: JetsourceSettings) -> None:
    """A story through the publisher's gRPC API, then read back from the event store."""
    from jetsource.client import ContextClient
    from jetsource.domain.context.events import registry
    from jetsource.eventstore.bootstrap import open_event_store
    from jetsource.publisher.settings import PublisherSettings

    demo = f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    target = PublisherSettings.load().publisher.target()
    async with ContextClient(target, actor="jetsource up") as client:
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
    console.print(
        f"publisher at {target}: story {demo!r} reached version {last.version}; read back "
        f"{', '.join(e.event_type for e in events)}; stream {settings.eventstore.stream} "
        f"holds {info['state']['messages']} events"
    )
    await _demo_read_models(demo, last.version)


async def _demo_read_models(demo: str, version: int) -> None:
    """Read the story back through the query service: read-your-writes from the
    projector's Valkey model, the past from the stream, the graph."""
    import grpc

    from jetsource.client import QueryClient
    from jetsource.query.settings import QuerySettings

    target = QuerySettings.load().query.target()
    started = time.monotonic()
    async with QueryClient(target, timeout=30) as q:
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
        console.print("[red]the read models did not show the story within 30 s[/red]")
        raise typer.Exit(1)
    c = now.context
    console.print(
        f"query at {target}: GetContext(min_version={version}) answered version {c.version} "
        f"({len(c.decisions)} decision, {len(c.subtasks)} subtask) from the read model in "
        f"{waited:.0f} ms; GetContextAtVersion(1): {first.context.title!r} with "
        f"{len(first.context.decisions)} decisions; graph: "
        + ", ".join(f"{e.type} {e.from_id}->{e.to_id}" for e in graph.edges)
    )
