"""`jetsource infra up | status | down` and the top-level `jetsource up`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.table import Table

from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.servers import ServerError
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
    """Stop the local servers started by `infra up` (external ones are left alone)."""
    stopped = _stack().down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def up_all() -> None:
    """Start the whole local system and show it working."""
    stack = _stack()
    if stack.running():
        console.print("local servers already running")
        _report(stack.status())
    else:
        up()
    asyncio.run(_show_event_store(stack.settings))


async def _show_event_store(settings: JetsourceSettings) -> None:
    """Provision the event stream, append a demo event and read it back."""
    from jetsource._gen.context.v1 import events_pb2
    from jetsource.core.envelope import NO_STREAM, NewEvent
    from jetsource.domain.context.events import registry
    from jetsource.eventstore.bootstrap import open_event_store

    nc, store = await open_event_store(settings, registry, provision=True)
    try:
        demo = f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
        created = events_pb2.ContextCreated(title="jetsource is up", created_by="jetsource up")
        result = await store.append(demo, [NewEvent(created)], NO_STREAM)
        (event,) = await store.read_aggregate(demo)
        assert isinstance(event.event, events_pb2.ContextCreated)
        info = await store.stream_info()
        console.print(
            f"event store: appended {event.event_type} to {demo!r} as version "
            f"{result.last_version} at stream sequence {result.stream_seqs[0]}, read back "
            f"{event.event.title!r}; stream {settings.eventstore.stream} holds "
            f"{info['state']['messages']} events"
        )
    finally:
        await store.close()
        await nc.close()
