"""`jetsource projector status | replay | rebuild | cutover | drop | dlq ...`.

Admin commands for the read models. They talk to NATS, Valkey and the graph store
directly (settings as for the projector service), show progress on long work, print
a summary and exit non-zero on failure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from jetsource.core.clock import parse_rfc3339_ns
from jetsource.core.errors import JetsourceError
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, UnknownModelError, open_projection
from jetsource.projection.control import ControlError
from jetsource.projection.settings import ProjectorSettings

T = TypeVar("T")
app = typer.Typer(help="Read models: status, replay, rebuild, cut over, dead letters.")
dlq = typer.Typer(help="Dead letters: list, show, retry, discard.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")
console = Console()

MODEL = typer.Option(..., "--model", "-m", help="context | timeline | graph")
MODEL_OPT = typer.Option(None, "--model", "-m", help="context | timeline | graph (default: all)")


def _run(work: Callable[[Projection], Awaitable[T]]) -> T:
    async def go() -> T:
        p = await open_projection(ProjectorSettings.load(), provision=False)
        try:
            return await work(p)
        finally:
            await p.close()

    try:
        return asyncio.run(go())
    except (admin.AdminError, ControlError, UnknownModelError, JetsourceError, ValueError) as exc:
        console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(1) from exc


def _progress(description: str) -> tuple[Progress, Callable[[int, int], None]]:
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def _time(value: str | None) -> int | None:
    return parse_rfc3339_ns(value) if value else None


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Per model version: state, active, checkpoint, lag, dead letters."""
    rows = _run(admin.status)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("model", "version", "active", "state", "checkpoint", "applied", "lag", "dlq")
    for r in rows:
        table.add_row(
            r["model"],
            str(r["version"]),
            "yes" if r.get("active") else "",
            r["state"],
            str(r.get("checkpoint", "")),
            str(r.get("applied", "")),
            str(r.get("lag", "")),
            str(r.get("dead_letters", "")),
        )
    console.print(table)


@app.command()
def replay(
    model: str = MODEL,
    aggregate: str | None = typer.Option(None, "--aggregate", help="One story id"),
    from_seq: int | None = typer.Option(None, "--from-seq", min=1),
    to_seq: int | None = typer.Option(None, "--to-seq", min=1),
    from_time: str | None = typer.Option(None, "--from-time", help="RFC 3339"),
    to_time: str | None = typer.Option(None, "--to-time", help="RFC 3339"),
) -> None:
    """Re-apply a slice of the stream (one story, a sequence or a time range)."""
    if not any((aggregate, from_seq, to_seq, from_time, to_time)):
        console.print("[red]error[/red]: name a slice: --aggregate, --from/--to-seq or -time")
        raise typer.Exit(2)
    bar, update = _progress(f"replaying {model}")
    with bar:
        report = _run(
            lambda p: admin.replay(
                p,
                model,
                aggregate,
                from_seq,
                to_seq,
                _time(from_time),
                _time(to_time),
                progress=update,
            )
        )
    console.print(
        f"{model} v{report.version}: {report.events} events in the slice, "
        f"{report.reapplied} re-applied, {report.carried_forward} carried forward, "
        f"{report.aggregates} stories, {report.seconds:.1f} s"
    )
    if report.failed:
        for seq, reason in sorted(report.failed.items()):
            console.print(f"[red]sequence {seq}[/red]: {reason}")
        raise typer.Exit(1)


@app.command()
def rebuild(
    model: str = MODEL,
    to_version: int = typer.Option(..., "--to-version", min=1),
) -> None:
    """Build a new version side by side from the start; the projector keeps it live."""
    bar, update = _progress(f"building {model} v{to_version}")
    with bar:
        report = _run(lambda p: admin.rebuild(p, model, to_version, progress=update))
    console.print(
        f"{model} v{to_version} built: {report.applied} events applied in "
        f"{report.seconds:.1f} s ({report.rate:,.0f}/s), checkpoint {report.checkpoint}. "
        f"Next: `jetsource projector cutover --model {model} --to-version {to_version}`"
    )


@app.command()
def cutover(
    model: str = MODEL,
    to_version: int = typer.Option(..., "--to-version", min=1),
    drop_old: bool = typer.Option(False, "--drop-old", help="Delete the previous version"),
    max_lag: int = typer.Option(1000, "--max-lag", min=0),
) -> None:
    """Switch the version queries read, atomically."""
    result = _run(lambda p: admin.cutover(p, model, to_version, drop_old, max_lag))
    dropped = f"; dropped v{result['previous']}" if "dropped" in result else ""
    console.print(f"{model}: active v{result['previous']} -> v{result['active']}{dropped}")


@app.command()
def drop(model: str = MODEL, version: int = typer.Option(..., "--version", min=1)) -> None:
    """Delete an inactive model version (namespace and consumer)."""
    removed = _run(lambda p: admin.drop(p, model, version))
    console.print(f"{model} v{version} dropped ({removed} keys/nodes)")


@dlq.command("list")
def dlq_list(
    model: str | None = MODEL_OPT,
    aggregate: str | None = typer.Option(None, "--aggregate"),
) -> None:
    """Dead letters, oldest first."""
    letters = _run(lambda p: admin.dlq_list(p, model, aggregate))
    table = Table("dlq seq", "model", "story", "stream seq", "tries", "time", "reason")
    for d in letters:
        s = d.summary()
        table.add_row(
            str(d.dlq_seq),
            s["model"],
            d.aggregate_id,
            str(d.original_seq),
            str(d.tries),
            s["time"],
            d.reason,
        )
    console.print(table)
    console.print(f"{len(letters)} dead letters")


@dlq.command("show")
def dlq_show(dlq_seq: int = typer.Argument(..., min=1)) -> None:
    """One dead letter in full."""

    async def get(p: Projection) -> dict[str, Any]:
        letter = await p.dead_letters.get(dlq_seq)
        if letter is None:
            raise admin.AdminError(f"no dead letter with sequence {dlq_seq}")
        out = letter.summary()
        out["data_hex"] = letter.data[:512].hex()
        return out

    console.print_json(json.dumps(_run(get)))


def _report(verb: str, report: admin.DlqReport) -> None:
    console.print(f"{len(report.done)} dead letters {verb}, {len(report.failed)} failed")
    for seq, reason in sorted(report.failed.items()):
        console.print(f"[red]{seq}[/red]: {reason}")
    if report.failed:
        raise typer.Exit(1)


SEQS = typer.Option(None, "--seq", help="Dead-letter sequence (repeatable)")


@dlq.command("retry")
def dlq_retry(
    model: str | None = MODEL_OPT,
    aggregate: str | None = typer.Option(None, "--aggregate"),
    seqs: list[int] | None = SEQS,
) -> None:
    """Apply dead letters again (after a fix); each success removes its entry."""
    bar, update = _progress("retrying")
    with bar:
        report = _run(lambda p: admin.dlq_retry(p, model, aggregate, seqs, progress=update))
    _report("applied", report)


@dlq.command("discard")
def dlq_discard(
    model: str | None = MODEL_OPT,
    aggregate: str | None = typer.Option(None, "--aggregate"),
    seqs: list[int] | None = SEQS,
    yes: bool = typer.Option(False, "--yes", help="Do not ask"),
) -> None:
    """Give up on dead letters: their stories step past them without applying them."""
    if not (seqs or aggregate):
        console.print("[red]error[/red]: name --seq or --aggregate to discard")
        raise typer.Exit(2)
    if not yes:
        typer.confirm("Discard these dead letters for good?", abort=True)
    _report("discarded", _run(lambda p: admin.dlq_discard(p, model, aggregate, seqs)))
