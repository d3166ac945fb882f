"""`jetsource infra up | status | down` and the top-level `jetsource up`."""

from __future__ import annotations

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
        return
    up()
