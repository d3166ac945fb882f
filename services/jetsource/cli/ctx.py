"""`jetsource ctx create | decide | subtask | link | close | show`: work a context from the shell.

Commands go through the publisher's gRPC API; `show` folds the context's events
from the event store.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import typer
from rich.console import Console
from rich.table import Table

from jetsource.client import STATUSES, ContextClient
from jetsource.domain.context.model import STATUS_NAMES, ContextState, fold
from jetsource.publisher.settings import PublisherSettings

app = typer.Typer(help="Work a story's context: commands via the publisher.", no_args_is_help=True)
console = Console()

KEY = typer.Option(None, "--idempotency-key", "-k", help="Retry-safe key (default: new)")
EXPECTED = typer.Option(None, "--expected-version", help="Apply only at this version")
ACTOR = typer.Option(None, "--actor", help="Who issues the command (default: $USER)")
PUBLISHER = typer.Option(None, "--publisher", help="host:port (default from settings)")


def _run(
    call: Callable[[ContextClient], Awaitable[Any]],
    publisher: str | None,
    actor: str | None,
) -> None:
    target = publisher or PublisherSettings.load().publisher.target()

    async def go() -> Any:
        async with ContextClient(target, actor=actor or getpass.getuser()) as client:
            return await call(client)

    try:
        result = asyncio.run(go())
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]{exc.code().name}[/red]: {exc.details()}")
        raise typer.Exit(1) from exc
    except ValueError as exc:
        console.print(f"[red]INVALID_ARGUMENT[/red]: {exc}")
        raise typer.Exit(2) from exc
    note = " (duplicate: original result)" if result.duplicate else ""
    console.print(
        f"{result.context_id} at version {result.version}, stream sequence "
        f"{list(result.stream_sequences)}{note}"
    )


def _opts(key: str | None, expected: int | None) -> dict[str, Any]:
    return {"idempotency_key": key, "expected_version": expected}


@app.command()
def create(
    context_id: str,
    title: str = typer.Option(..., "--title"),
    description: str = typer.Option("", "--description"),
    tag: list[str] = typer.Option([], "--tag"),
    key: str | None = KEY,
    expected: int | None = EXPECTED,
    actor: str | None = ACTOR,
    publisher: str | None = PUBLISHER,
) -> None:
    """Create a context for a story."""
    _run(
        lambda c: c.create_context(context_id, title, description, tag, **_opts(key, expected)),
        publisher,
        actor,
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
    publisher: str | None = PUBLISHER,
) -> None:
    """Add a decision; or --revise it; or supersede it with --superseded-by NEW."""
    o = _opts(key, expected)
    if superseded_by:
        _run(
            lambda c: c.supersede_decision(context_id, decision_id, superseded_by, reason, **o),
            publisher,
            actor,
        )
    elif revise:
        _run(
            lambda c: c.revise_decision(context_id, decision_id, title, body, rationale, **o),
            publisher,
            actor,
        )
    else:
        _run(
            lambda c: c.add_decision(context_id, decision_id, title, body, rationale, affects, **o),
            publisher,
            actor,
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
    publisher: str | None = PUBLISHER,
) -> None:
    """Add a subtask (with --title) or update its status, assignee or progress."""
    o = _opts(key, expected)
    if title is not None:
        _run(
            lambda c: c.add_subtask(
                context_id, subtask_id, title, description, assignee or "", **o
            ),
            publisher,
            actor,
        )
    else:
        _run(
            lambda c: c.update_subtask(context_id, subtask_id, status, assignee, progress, **o),
            publisher,
            actor,
        )


@app.command()
def link(
    context_id: str,
    from_id: str,
    to_id: str,
    key: str | None = KEY,
    expected: int | None = EXPECTED,
    actor: str | None = ACTOR,
    publisher: str | None = PUBLISHER,
) -> None:
    """Record that FROM_ID depends on TO_ID (decisions or subtasks)."""
    _run(
        lambda c: c.link_dependency(context_id, from_id, to_id, **_opts(key, expected)),
        publisher,
        actor,
    )


@app.command()
def close(
    context_id: str,
    reason: str = typer.Option("", "--reason"),
    key: str | None = KEY,
    expected: int | None = EXPECTED,
    actor: str | None = ACTOR,
    publisher: str | None = PUBLISHER,
) -> None:
    """Close the context: it accepts no more changes."""
    _run(lambda c: c.close_context(context_id, reason, **_opts(key, expected)), publisher, actor)


@app.command()
def show(context_id: str) -> None:
    """Show the context's current state, folded from its events."""
    from jetsource.domain.context.events import registry
    from jetsource.eventstore.bootstrap import open_event_store

    async def load() -> ContextState:
        nc, store = await open_event_store(PublisherSettings.load(), registry)
        try:
            events = await store.read_aggregate(context_id)
        finally:
            await store.close()
            await nc.close()
        return fold([e.event for e in events], context_id=context_id)

    state = asyncio.run(load())
    if not state.exists:
        console.print(f"[red]NOT_FOUND[/red]: context {context_id!r} has no events")
        raise typer.Exit(1)
    closed = " [closed]" if state.closed else ""
    console.print(f"[bold]{state.title}[/bold] ({context_id}, version {state.version}){closed}")
    decisions = Table("decision", "title", "rationale", "status")
    for d in state.decisions.values():
        decisions.add_row(
            d.id,
            d.title,
            d.rationale,
            f"superseded by {d.superseded_by}" if d.superseded_by else "active",
        )
    subtasks = Table("subtask", "title", "assignee", "status", "progress")
    for t in state.subtasks.values():
        subtasks.add_row(
            t.id, t.title, t.assignee, STATUS_NAMES.get(t.status, "?"), f"{t.progress}%"
        )
    console.print(decisions, subtasks)
    for frm, to in sorted(state.dependencies):
        console.print(f"  {frm} depends on {to}")
