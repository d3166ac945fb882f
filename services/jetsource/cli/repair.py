"""`jetsource repair void --seq N --reason TEXT --yes`: make a poisoned story usable again.

The event stream denies deletes and purges, so a message that is not a valid event at
its place (it does not decode, its envelope is empty or names another story, its
version breaks the chain, or the domain refuses it) is not removed: it is voided, by
an envelope of its own recorded beside the events. Every reader then steps over it,
and the read models' dead letters of that story are cleared and re-applied.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys

import typer

from jetsource.core.errors import JetsourceError
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.repair import VoidReport, void_sequence
from jetsource.projection.settings import ProjectorSettings

app = typer.Typer(help="Repair a poisoned story without deleting anything.", no_args_is_help=True)


@app.command("void")
def void(
    seq: int = typer.Option(..., "--seq", min=1, help="the stream sequence to void"),
    reason: str = typer.Option(..., "--reason", help="why (kept in the stream)"),
    actor: str = typer.Option("", "--actor", help="who (default: $USER)"),
    yes: bool = typer.Option(False, "--yes", help="confirm: the void cannot be undone"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Void one stream sequence of a story: every reader steps over it from now on."""
    if not yes:
        typer.echo(
            f"voiding stream sequence {seq} cannot be undone: add --yes to confirm", err=True
        )
        raise typer.Exit(2)

    async def go() -> VoidReport:
        p = await open_projection(ProjectorSettings.load(), provision=False)
        try:
            return await void_sequence(p, seq, reason, actor or getpass.getuser())
        finally:
            await p.close()

    try:
        report = asyncio.run(go())
    except (JetsourceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        json.dump(report.summary(), sys.stdout)
        sys.stdout.write("\n")
        return
    state = "was already voided" if report.voided_before else "voided"
    typer.echo(f"stream sequence {seq} of story {report.aggregate_id}: {state}")
    for model, entry in report.models.items():
        typer.echo(
            f"  {model}: dead letter dropped {len(entry['dropped'])}, stepped over "
            f"{len(entry['stepped_over'])}, re-applied {len(entry['retried'])}, "
            f"failed {len(entry['failed'])}"
        )
        for dlq_seq, why in entry["failed"].items():
            typer.echo(f"    dead letter {dlq_seq}: {why}")
