"""`jetsource ctx create | decide | subtask | link | close | show`: work a context from the shell.

Commands go through the publisher's gRPC API; `show` reads through the query
service (`--at` a version or a time travels back).
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import typer
from rich.console import Console
from rich.table import Table

from jetsource._gen.context.v1.query_pb2 import CONTEXT_STATUS_CLOSED
from jetsource.client import STATUSES, ContextClient, QueryClient
from jetsource.publisher.settings import PublisherSettings
from jetsource.query.settings import QuerySettings

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
    settings = PublisherSettings.load()
    target = publisher or settings.publisher.target()

    async def go() -> Any:
        async with ContextClient(
            target, actor=actor or getpass.getuser(), security=settings.client
        ) as client:
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
def show(
    context_id: str,
    at: str | None = typer.Option(
        None,
        "--at",
        help="A version (e.g. 12) or a time (ISO 8601, e.g. 2026-11-23T10:00:00Z): "
        "the context as it was then",
    ),
    query: str | None = typer.Option(None, "--query", help="host:port (default from settings)"),
) -> None:
    """Show a context through the query service: now, or at a version or time."""
    settings = QuerySettings.load()
    target = query or settings.query.target()
    point: int | datetime | None = None
    if at is not None:
        try:
            point = int(at) if at.strip().lstrip("-").isdigit() else _when(at)
        except ValueError as exc:
            console.print(f"[red]INVALID_ARGUMENT[/red]: --at {at!r}: {exc}")
            raise typer.Exit(2) from exc

    async def load() -> tuple[Any, str]:
        async with QueryClient(target, security=settings.client) as q:
            if point is None:
                r = await q.get_context(context_id)
                return r.context, "now"
            r2: Any
            if isinstance(point, int):
                r2 = await q.at_version(context_id, point)
            else:
                r2 = await q.at_time(context_id, point)
            source = (
                f"from snapshot v{r2.snapshot_version} + {r2.events_folded} events"
                if r2.snapshot_version
                else f"folded from {r2.events_folded} events"
            )
            return r2.context, f"at {at} ({source})"

    try:
        view, when = asyncio.run(load())
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]{exc.code().name}[/red]: {exc.details()}")
        raise typer.Exit(1) from exc
    closed = " [closed]" if view.status == CONTEXT_STATUS_CLOSED else ""
    console.print(
        f"[bold]{view.title}[/bold] ({context_id}, version {view.version}, {when}){closed}"
    )
    decisions = Table("decision", "title", "rationale", "status")
    for d in view.decisions:
        decisions.add_row(
            d.id,
            d.title,
            d.rationale,
            f"superseded by {d.superseded_by}" if d.superseded_by else "active",
        )
    subtasks = Table("subtask", "title", "assignee", "status", "progress")
    names = {v: k for k, v in STATUSES.items()}
    for t in view.subtasks:
        subtasks.add_row(t.id, t.title, t.assignee, names.get(t.status, "?"), f"{t.progress}%")
    console.print(decisions, subtasks)
    for dep in view.dependencies:
        console.print(f"  {dep.from_id} depends on {dep.to_id}")


def _when(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
