"""`jetsource repair void --seq N --reason TEXT --yes`: make a poisoned story usable again.

The event stream denies deletes and purges, so a message that is not a valid event at
its place (it does not decode, its envelope is empty or names another story, its
version breaks the chain, or the domain refuses it) is not removed: it is voided, by
an envelope of its own recorded beside the events. Every reader then steps over it,
and the read models' dead letters of that story are cleared and re-applied.

--dry-run records nothing (no --yes needed): it names the stream, the aggregate, whether
it is voided already, and per read model the dead letters it would drop or step over,
the ones it would apply again and the models it would replay without the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from jetsource.cli import output
from jetsource.cli.output import REFUSED, U64, USAGE
from jetsource.cli.projector import _json, _run

if TYPE_CHECKING:
    from jetsource.projection.repair import VoidReport

# Kept in the void's record (its envelope's metadata) as given: bounded and checked by
# the rule of free text (jetsource.core.printable), naming the option, before anything
# is written. They were stored as they came: an ESC, a NUL, a --reason past 1,000
# characters cut in silence, an --actor holding a line break.
MAX_REASON, MAX_ACTOR = 1000, 100


def _checked_text(
    value: str, option: str, limit: int, lines: bool = False, ident: bool = False
) -> str:
    """``value`` as kept (a --reason's line breaks as LF), or a usage error naming
    ``option``: over ``limit`` characters, or a character the rule refuses (many lines:
    tabs and line breaks and no other control; one line: no control character nor
    U+2028/U+2029), or a lone surrogate (bytes that were not UTF-8)."""
    from jetsource.core.printable import (
        ID_TAKES,
        LINES_TAKE,
        lf_lines,
        not_id_at,
        not_lines_at,
        not_one_line_at,
        refused_at,
    )

    if len(value) > limit:
        output.fail(
            USAGE, "usage", f"{option} is {len(value)} characters; at most {limit}", field=option
        )
    if ident:
        # Who voided it (--actor): no bidi embedding, override or isolate (printable.NOT_ID).
        at, takes = not_id_at(value), ID_TAKES
    else:
        at = not_lines_at(value) if lines else not_one_line_at(value)
        takes = LINES_TAKE if lines else "one line of printable text"
    if at is not None:
        output.fail(
            USAGE,
            "usage",
            f"{option} holds {refused_at(value, at)}: it takes {takes}",
            field=option,
        )
    surrogate = next((i for i, ch in enumerate(value) if "\ud800" <= ch <= "\udfff"), None)
    if surrogate is not None:
        output.fail(
            USAGE,
            "usage",
            f"{option} holds a lone UTF-16 surrogate at position {surrogate} (bytes that "
            "were not UTF-8?), which is no Unicode character",
            field=option,
        )
    return lf_lines(value) if lines else value


app = typer.Typer(help="Repair a poisoned story without deleting anything.", no_args_is_help=True)


@app.command("void")
def void(
    seq: int = typer.Option(..., "--seq", min=1, max=U64, help="the stream sequence to void"),
    reason: str = typer.Option(..., "--reason", help="why (kept in the stream)"),
    actor: str = typer.Option("", "--actor", help="who (default: $USER)"),
    yes: bool = typer.Option(False, "--yes", help="confirm: the void cannot be undone"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say what the void would do, record nothing"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    domain: str | None = typer.Option(
        None,
        "--domain",
        help="the domain whose stream holds the sequence (context, process, omni, ...); "
        "needed when several streams hold an event at it and no dead letter says which",
    ),
) -> None:
    """Void one stream sequence of a story: every reader steps over it from now on."""
    from jetsource.core.printable import blank
    from jetsource.projection.repair import void_sequence

    json_out = _json(as_json)
    if blank(reason):
        output.fail(
            USAGE, "usage", "--reason must say why (it is kept in the stream)", field="--reason"
        )
    reason = _checked_text(reason, "--reason", MAX_REASON, lines=True)
    actor = _checked_text(actor, "--actor", MAX_ACTOR, ident=True)
    if not yes and not dry_run:
        output.fail(
            USAGE,
            "usage",
            f"voiding stream sequence {seq} cannot be undone: add --yes to confirm",
            field="--yes",
        )
    if domain is not None and blank(domain):
        output.fail(
            USAGE,
            "usage",
            "--domain must name a domain (context, process, omni, ...)",
            field="--domain",
        )
    if dry_run:
        _dry_run(seq, domain, json_out)
        return
    report: VoidReport = _run(
        lambda p: void_sequence(p, seq, reason, actor or output.user_name(), domain),
        stopped=f"the void of stream sequence {seq} stopped (Ctrl-C): run the same command "
        "again to finish it (a void already recorded is not recorded twice)",
    )
    if json_out:
        output.emit_json(report.summary())
        _exit_if_incomplete(report)
        return
    _say_sequence(seq, report, "voided")
    for model, entry in report.models.items():
        if "replayed" in entry:  # a model that had applied it as a valid event
            what = (
                "replayed without it"
                if entry["replayed"]
                else "not past it yet: steps over it when it comes"
                if entry.get("not_yet_applied")
                else "NOT replayed (see below: a side-by-side rebuild puts it right)"
            )
            output.line(f"  {model}: {what}, failed {len(entry['failed'])}")
        else:
            output.line(
                f"  {model}: dead letter dropped {len(entry['dropped'])}, stepped over "
                f"{len(entry['stepped_over'])}, re-applied {len(entry['retried'])}, "
                f"failed {len(entry['failed'])}"
            )
        for key, why in entry["failed"].items():
            output.line(f"    {key}: {why}")
    _exit_if_incomplete(report)


def _say_sequence(seq: int, report: VoidReport, state: str) -> None:
    """The text report's first line, the void's and its dry run's alike: the sequence,
    its stream and domain, the aggregate, and ``state`` (what the void did or would
    do) unless it was voided already."""
    state = "was already voided" if report.voided_before else state
    output.line(
        f"stream sequence {seq} of {report.stream} ({report.domain}), "
        f"aggregate {report.aggregate_id}: {state}"
    )


def _dry_run(seq: int, domain: str | None, json_out: bool) -> None:
    """What the void would do, found as the void finds it; nothing recorded."""
    from jetsource.projection.repair import plan_void

    report: VoidReport = _run(
        lambda p: plan_void(p, seq, domain), stopped="stopped (Ctrl-C); nothing was voided"
    )
    if json_out:
        output.emit_json(report.summary() | {"dry_run": True})
        return
    _say_sequence(seq, report, "would be voided")
    for model, entry in report.models.items():
        if entry.get("would_replay"):
            output.line(f"  {model}: would be replayed without it")
        if "dropped" in entry:
            output.line(
                f"  {model}: dead letter would be dropped {len(entry['dropped'])}, stepped "
                f"over {len(entry['stepped_over'])}; would re-apply {len(entry['retried'])}"
            )


def _exit_if_incomplete(report: VoidReport) -> None:
    """Voided, but a model's dead letters failed again or a model could not be written
    again from the stream: exit 1 (refused), as `projector dlq retry` does, so a script
    does not take the story for repaired."""
    left = [
        model
        for model, entry in report.models.items()
        if entry["failed"]
        or ("replayed" in entry and not entry["replayed"] and not entry.get("not_yet_applied"))
    ]
    if left:
        rebuild = report.left_to_rebuild()
        hint = "; ".join(
            f"jetsource projector rebuild --model {m.split(' v')[0]} --to-version N, then "
            f"cutover (or `jetsource projector reset {m.split(' v')[0]} --yes` if {m} is "
            "active)"
            for m in rebuild
        )
        output.fail(
            REFUSED,
            "refused",
            f"stream sequence {report.seq} is voided, but {', '.join(left)} did not take it "
            "up (see the report: retry the dead letters, or rebuild side by side)",
            left_to_rebuild=rebuild or None,
            hint=f"left to rebuild: {', '.join(rebuild)}: {hint}" if rebuild else None,
        )
