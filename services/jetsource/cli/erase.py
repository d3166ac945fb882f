"""`jetsource erase SUBJECT --yes [--dry-run] [--json]`: erase a person's personal data.

Destroys the subject's data key (crypto-shredding): every personal field of theirs in
every stream reads "<erased>" from then on, everywhere; then writes the affected
aggregates again in every read model and takes their snapshots again. Nothing else of
any event changes (versions, other fields, sequences). Cannot be undone.

--dry-run changes nothing (no --yes needed): it says whether there is a key to destroy,
scans the streams as the erase does and names the aggregates and model versions that
would be written again.

Exit codes: 0 done, 1 some models or aggregates were not written again (run it again:
it is safe and finishes the work), 2 usage, 3 unavailable. A model version another run
dropped (or reset) during the erase is said under "skipped", not failed: it was emptied,
nothing of it is left to erase (0 when every other version was written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from jetsource.cli import output
from jetsource.cli.output import REFUSED, USAGE
from jetsource.cli.projector import _json, _progress, _run

if TYPE_CHECKING:
    from jetsource.projection.erasure import ErasureReport


def erase(
    subject: str = typer.Argument(..., help="The person: the value their personal fields hold"),
    yes: bool = typer.Option(False, "--yes", help="confirm: an erasure cannot be undone"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say what would be erased and written again, change nothing"
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout"),
) -> None:
    """Erase SUBJECT's personal data: destroy their key, update the read models."""
    from jetsource.core.errors import ValidationError
    from jetsource.projection.erasure import check_subject, erase_subject

    json_out = _json(as_json)
    try:
        check_subject(subject)
        subject.encode("utf-8")
    except ValidationError as exc:
        output.fail(USAGE, "usage", str(exc), field="subject")
    except UnicodeEncodeError as exc:
        output.fail(USAGE, "usage", output.not_utf8(exc), field="subject")
    if dry_run:
        _dry_run(subject, json_out)
        return
    if not yes:
        output.fail(
            USAGE,
            "usage",
            "erasing personal data cannot be undone: add --yes to confirm",
            field="--yes",
        )
    with _progress("erasing") as update:
        # Every domain's event stream must exist: against a NATS without them (the
        # wrong server?) "key already gone, 0 events scanned" read as an erasure done.
        report = _run(
            lambda p: erase_subject(p, subject, progress=update),
            lambda p: [store.settings.stream for store in p.stores.values()],
            stopped=f"the erasure of {subject} stopped (Ctrl-C): its key may be destroyed "
            "already and some read models written; run the same erase again to finish it "
            "(it is safe to repeat)",
        )
    if json_out:
        output.emit_json(report.summary())
    else:
        state = "destroyed" if report.key_destroyed else "already gone (or never made)"
        n = sum(len(v) for v in report.aggregates.values())
        output.line(
            f"key {report.subject_ref or '-'}: {state}; "
            f"{output.count(report.scanned, 'event')} scanned, "
            f"{output.count(n, 'aggregate')} written again in "
            f"{output.count(written_models(report), 'model')} "
            f"in {report.seconds:.2f} s"
        )
        for problem in report.failed:
            output.line(f"  failed: {problem}")
        for skipped in report.skipped:  # dropped meanwhile: nothing of it to erase
            output.line(f"  skipped: {skipped}")
    if report.failed:  # running it again finishes it (projection.erasure)
        output.fail(
            REFUSED,
            "refused",
            f"{output.count(len(report.failed), 'read model')} not written again; run the same "
            "erase again",
        )


def written_models(report: ErasureReport) -> int:
    """The models the erase writes again (with --dry-run: would): those with a version
    in its plan, counted alike by both (the erase counted every model of every
    registered domain, the never built and the untouched too, the dry run these)."""
    return sum(1 for entry in report.models.values() if entry["versions"])


def _dry_run(subject: str, json_out: bool) -> None:
    """What the erase would do, from the same scan and plan; nothing destroyed or written."""
    from jetsource.projection.erasure import plan_erasure

    report = _run(
        lambda p: plan_erasure(p, subject),
        lambda p: [store.settings.stream for store in p.stores.values()],
        stopped="stopped (Ctrl-C); nothing was erased",
    )
    if json_out:
        output.emit_json(report.summary() | {"dry_run": True})
        return
    state = "would be destroyed" if report.key_destroyed else "already gone (or never made)"
    n = sum(len(v) for v in report.aggregates.values())
    output.line(
        f"key {report.subject_ref or '-'}: {state}; "
        f"{output.count(report.scanned, 'event')} scanned, "
        f"{output.count(n, 'aggregate')} would be written again in "
        + output.count(written_models(report), "model")
    )
    for domain, ids in report.aggregates.items():
        for agg in ids:
            output.line(f"  {domain}\t{agg}")
    for name, entry in report.models.items():
        if entry["versions"]:
            versions = ", ".join(f"v{v}" for v in entry["versions"])
            output.line(f"  {name}: {versions}")
    for problem in report.failed:
        output.line(f"  not planned: {problem}")
