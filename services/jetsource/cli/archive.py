"""`jetsource archive compact | export | verify | list | restore`: the archiver role.

``compact`` is the only thing in jetsource that purges events: for a domain whose
stream policy is ``age+compaction`` it seals what lies behind the horizon and a
snapshot into verified segments, records each aggregate's horizon, then purges.
Run it on a schedule (a CronJob) with the archiver's NATS credentials, the only
ones allowed ``$JS.API.STREAM.PURGE.<stream>``. Settings as for the projector, plus
``JETSOURCE_ARCHIVE__URL`` (a directory, default ``.jetsource/archive``, or
``s3://bucket/prefix`` with ``JETSOURCE_ARCHIVE__ENDPOINT`` / ``__REGION`` and the
usual ``AWS_*`` credentials).

Exit codes: 0 ok, 1 failed or refused (verify found a damaged segment), 3 NATS away
or JetStream refusing a write (its store full: free space and run it again).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import typer

from jetsource.cli import output
from jetsource.cli.output import REFUSED, U64, UNAVAILABLE, USAGE
from jetsource.cli.projector import _json, connect_timeout_s
from jetsource.core import aio
from jetsource.core.clock import MAX_AGE_S

# The archive, the projection runtime and NATS are imported by the commands that use
# them (`archive --help` does not pay for them).
if TYPE_CHECKING:
    from jetsource.projection.bootstrap import Projection
    from jetsource.projection.settings import ProjectorSettings

app = typer.Typer(
    help="The archive: compaction behind snapshots, export, verify, list, restore.",
    no_args_is_help=True,
)


def _domain(value: str | None) -> str | None:
    """An option callback: ``--domain ""`` is a usage error, not the default domain."""
    from jetsource.core.printable import blank

    if value is not None and blank(value):
        raise typer.BadParameter("name a domain (or leave --domain out for the first one)")
    if value is not None:
        # A misspelt domain is a usage error (exit 2, naming --domain) before anything
        # connects, as a misspelt model is for `projector`: it was `refused`, exit 1.
        from jetsource.cli.projector import _settings
        from jetsource.projection.bootstrap import load_domains

        known = [d.name for d in load_domains(_settings().projector.domains)]
        if value not in known:
            raise typer.BadParameter(f"unknown domain {value!r}; known: {', '.join(known)}")
    return value


DOMAIN = typer.Option(
    None,
    "--domain",
    "-d",
    callback=_domain,
    help="The domain whose stream (default: the first registered)",
)
TIMEOUT = typer.Option(3600.0, "--timeout", min=0.1, help="Give up after this many seconds")
JSON = typer.Option(False, "--json", help="Print the result as JSON")
# A stream name the server takes (no dots, wildcards, spaces or path separators).
STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
RETENTIONS = ("forever", "age", "age+compaction")


SEALED_SO_FAR = "stopped midway: every segment sealed so far is whole (run it again to go on)"
# `list` and `verify` only read: Ctrl-C said they had sealed segments.
ONLY_READ = "stopped (Ctrl-C) before it was done; it only reads: nothing changed"


def _run(
    work: Callable[[Projection, ProjectorSettings], Awaitable[Any]],
    timeout: float,
    as_json: bool = False,
    interrupted: str = SEALED_SO_FAR,
) -> Any:
    """Connect (NATS must answer within ``JETSOURCE_ADMIN_CONNECT_TIMEOUT_S``, 10 s, or
    ``--timeout`` if shorter: exit 3), then run ``work`` within ``--timeout``. Errors
    go to stderr (JSON with --json or -o json): 1 refused or failed, 3 unavailable."""
    from nats import errors as nats_errors

    from jetsource.cli.streams import (
        INTERRUPTED,
        NatsUnreachableError,
        NoAnswerError,
        no_answer_message,
        settings_checked,
        unreachable_message,
        wait_for_nats,
        within,
    )
    from jetsource.core.errors import (
        AccessDeniedError,
        EventStoreUnavailableError,
        JetsourceError,
        StreamMissingError,
    )
    from jetsource.core.settings import redact_url
    from jetsource.eventstore import jsapi
    from jetsource.eventstore.bootstrap import require_jetstream
    from jetsource.projection.bootstrap import DomainsError, open_projection, projection_domains
    from jetsource.projection.settings import ProjectorSettings

    _json(as_json)
    settings = ProjectorSettings.load()
    connect_s = min(timeout, connect_timeout_s())
    try:  # the settings first: said as such whatever NATS is (not "not reachable")
        domains = projection_domains(settings)
        settings_checked(settings)
    except DomainsError as exc:  # a bad setting: exit 2 naming it, as `projector` says it
        output.fail(USAGE, "usage", str(exc), field=exc.field)
    except AccessDeniedError as exc:
        output.fail(REFUSED, "access denied", str(exc))

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connected_by = loop.time() + connect_s  # the TCP try and the handshake together
        await wait_for_nats(settings.nats_url(), connected_by, refused_ends=True)
        try:
            p = await aio.wait_for(
                open_projection(settings, provision=False, domains=domains),
                max(connected_by - loop.time(), 0.1),
            )
        except TimeoutError:
            # Unanswered because NATS refused its requests: not an outage.
            if refused := jsapi.refused_instead(redact_url(settings.nats_url()), connect_s + 5):
                raise refused from None
            raise NatsUnreachableError("no NATS handshake") from None
        try:
            await require_jetstream(p.nc, settings)
            return await within(max(deadline - loop.time(), 1.0), work(p, settings))
        finally:
            await p.close()

    try:
        return aio.run(go())
    except NatsUnreachableError as exc:
        output.fail(
            UNAVAILABLE,
            "unavailable",
            unreachable_message(settings.nats_url(), exc, connect_s),
            hint="JETSOURCE_NATS__URL",
        )
    except NoAnswerError as exc:
        where = redact_url(settings.nats_url())
        output.fail(
            UNAVAILABLE, "unavailable", no_answer_message(where, exc), hint="JETSOURCE_NATS__URL"
        )
    except TimeoutError:
        output.fail(
            UNAVAILABLE, "timeout", f"not done within --timeout {timeout:g} s", field="--timeout"
        )
    except KeyboardInterrupt:
        output.fail(INTERRUPTED, "cancelled", interrupted)  # the code every group uses
    except AccessDeniedError as exc:  # as every admin group says it
        output.fail(REFUSED, "access denied", str(exc))
    except (StreamMissingError, jsapi.NoRespondersError) as exc:  # as in every group: exit 1
        output.missing("refused", output.stream_named(str(exc)) or str(exc))
    except EventStoreUnavailableError as exc:  # JetStream off, a write it refused: retry later
        output.fail(UNAVAILABLE, "unavailable", str(exc), hint="JETSOURCE_NATS__URL")
    except (JetsourceError, jsapi.JsApiError, nats_errors.Error, OSError, ValueError) as exc:
        if refusal := output.refusal(exc):
            output.fail(UNAVAILABLE, "unavailable", refusal, hint="JETSOURCE_NATS__URL")
        field = getattr(exc, "field", None)
        output.fail(REFUSED, "refused", str(exc) or type(exc).__name__, field=field)


def _warn(text: str) -> None:
    """A note on stderr beside the result: ``{"warning": ...}`` with JSON output."""
    import sys

    if output.mode() == output.Mode.json:
        text = output.json_text({"warning": text})
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _store(p: Projection, domain: str | None) -> Any:
    return p.domain_store(domain) if domain else p.store


def _schema(p: Projection, domain: str | None) -> int | None:
    """The state schema of the domain's snapshots (a covering snapshot must have it)."""
    d = p.domains.get(domain) if domain else next(iter(p.domains))
    pinned = [decl.pinned_version for decl in d.models.values() if decl.pinned_version]
    return pinned[0] if pinned else None


@app.command()
def compact(
    domain: str | None = DOMAIN,
    timeout: float = TIMEOUT,
    as_json: bool = JSON,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say what would be archived and purged; write nothing"
    ),
) -> None:
    """Archive what lies behind the horizon and a snapshot, verify it, then purge it.

    Per aggregate: its live events older than the policy's max age, up to the version
    its latest snapshot covers, never its last event. Safe to run again after a crash
    and beside another archiver: nothing is purged that is not in a segment this run
    sealed and read back. --dry-run makes the same checks and choice of events and
    counts what would be archived, purged and sealed (segments are named as they are
    written: none listed); nothing is written or purged."""
    _json(as_json)

    async def work(p: Projection, s: ProjectorSettings) -> Any:
        from jetsource.archive.archiver import Archiver
        from jetsource.archive.history import open_archive

        store = _store(p, domain)
        await store.stream_info()  # a missing stream is said as such
        archive = open_archive(s, store.settings.stream)
        archiver = Archiver(
            store, p.snapshots, archive, _schema(p, domain), s.archive.segment_events
        )
        return await archiver.compact(progress=update, dry_run=dry_run)

    from jetsource.cli.projector import _progress

    with _progress("archive compact") as update:  # stderr: a bar, lines, or JSON lines
        report = _run(work, timeout, as_json)
    data = asdict(report)
    would_seal = data.pop("would_seal")
    if output.mode() == output.Mode.json:
        output.emit_json(data | {"dry_run": True, "would_seal": would_seal} if dry_run else data)
        return
    n = len(report.kept)
    kept = f"{output.count(n, 'aggregate')} {'keeps' if n == 1 else 'keep'}"
    if dry_run:
        output.line(
            f"{report.stream}: would archive {output.count(report.archived, 'event')} of "
            f"{output.count(report.aggregates, 'aggregate')} in "
            f"{output.count(would_seal, 'segment')} and purge {report.purged}; "
            f"{kept} old events ({report.scanned} older than the horizon)"
        )
        return
    output.line(
        f"{report.stream}: {output.count(report.archived, 'event')} of "
        f"{output.count(report.aggregates, 'aggregate')} archived in "
        f"{output.count(len(report.segments), 'segment')}, {report.purged} purged; "
        f"{kept} old events ({report.scanned} older than the horizon)"
    )


@app.command()
def export(
    domain: str | None = DOMAIN,
    from_seq: int = typer.Option(1, "--from-seq", min=1, max=U64),
    to_seq: int | None = typer.Option(None, "--to-seq", min=1, max=U64),
    timeout: float = TIMEOUT,
    as_json: bool = JSON,
) -> None:
    """Seal the stream's messages (events and voids) into archive segments; purges nothing."""
    _json(as_json)
    if to_seq is not None and to_seq < from_seq:
        output.fail(
            USAGE, "usage", f"--from-seq {from_seq} is after --to-seq {to_seq}", field="--to-seq"
        )

    async def work(p: Projection, s: ProjectorSettings) -> Any:
        from jetsource.archive.archiver import Archiver
        from jetsource.archive.history import open_archive

        store = _store(p, domain)
        await store.stream_info()  # a missing stream is said as such
        archive = open_archive(s, store.settings.stream)
        archiver = Archiver(store, None, archive, None, s.archive.segment_events)
        sealed = await archiver.export(from_seq, to_seq, progress=update)
        end = int((await store.stream_info())["state"]["last_seq"])
        if from_seq > end:  # said, not a silent "0 messages sealed"
            _warn(
                f"--from-seq {from_seq} is past the stream's last sequence ({end}): nothing to seal"
            )
        if archiver.skipped:
            ranges = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in archiver.skipped)
            names = ", ".join(e.name.rsplit("/", 1)[-1] for e in archiver.skipped_in)
            _warn(
                f"sequences {ranges} left out: sealed already (in {names}); "
                "only what no segment holds was sealed now"
            )
        return sealed

    from jetsource.cli.projector import _progress

    with _progress("archive export") as update:  # stderr: a bar, lines, or JSON lines
        entries = _run(work, timeout, as_json)
    if output.mode() == output.Mode.json:
        output.emit_json([{"name": e.name, "count": e.count} for e in entries])
        return
    sealed = output.count(sum(e.count for e in entries), "message")
    output.line(f"{sealed} sealed in {output.count(len(entries), 'segment')}")


@app.command("list")
def list_(domain: str | None = DOMAIN, timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """The manifest: every sealed segment of the stream."""

    async def work(p: Projection, s: ProjectorSettings) -> Any:
        from jetsource.archive.history import open_archive
        from jetsource.eventstore import horizon

        store = _store(p, domain)
        stream = store.settings.stream
        archive = open_archive(s, stream)
        listed = await archive.entries(strict=False)
        # Segments the horizons name that no entry lists: the purged history is not here.
        horizons = await horizon.read_all(store._replies, stream, store.settings.request_timeout_s)
        missing = archive.unlisted(listed, horizons)
        return archive.objects.location, listed, archive.unreadable, missing

    where, entries, unreadable, missing = _run(work, timeout, as_json, ONLY_READ)
    if output.mode() == output.Mode.json:
        output.emit_json([asdict(e) for e in entries])
    else:
        output.table(
            f"archive at {where}",
            ("segment", "events", "first seq", "last seq", "aggregates", "bytes"),
            (
                (
                    e.name.rsplit("/", 1)[-1],
                    e.count,
                    e.first_seq,
                    e.last_seq,
                    len(e.aggregates),
                    e.size,
                )
                for e in entries
            ),
        )
    if unreadable or missing:  # the rest is listed above; these are named, exit 1 as verify
        said = []
        if unreadable:
            said.append(
                f"{len(unreadable)} manifest entries do not read: " + "; ".join(unreadable.values())
            )
        if missing:
            said.append(
                f"{output.count(len(missing), 'segment')} missing: " + "; ".join(missing.values())
            )
        output.fail(REFUSED, "refused", "; ".join(said), unreadable=unreadable, missing=missing)


@app.command()
def verify(domain: str | None = DOMAIN, timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Read every segment and check it against the manifest (checksums, count,
    sequences); exit 1 if one is damaged or missing."""

    async def work(p: Projection, s: ProjectorSettings) -> Any:
        from jetsource.archive.history import open_archive
        from jetsource.eventstore import horizon

        store = _store(p, domain)
        stream = store.settings.stream
        # The segments compaction purged on account of: each must be in the manifest.
        horizons = await horizon.read_all(store._replies, stream, store.settings.request_timeout_s)
        return await open_archive(s, stream).verify(horizons)

    report = _run(work, timeout, as_json, ONLY_READ)
    if output.mode() == output.Mode.json:
        output.emit_json(asdict(report))
    else:
        output.line(
            f"{output.count(len(report.ok), 'segment')} verified, {len(report.corrupt)} damaged, "
            f"{len(report.orphans)} without a manifest entry (left by an interrupted run)"
        )
        from rich.text import Text

        for name, why in report.corrupt.items():  # a segment, or an entry that does not read
            output.line(Text.assemble(("damaged", "red"), f" {name}: {why}"))
        for name in report.orphans:  # named, not only counted: the operator looks at them
            output.line(Text.assemble(("orphan", "yellow"), f" {name}"))
    if not report.passed:
        names = ", ".join(sorted(report.corrupt))
        output.fail(
            REFUSED, "refused", f"{output.count(len(report.corrupt), 'segment')} damaged: {names}"
        )


@app.command()
def restore(
    target: str = typer.Argument(..., help="Name of the new stream"),
    subject_prefix: list[str] = typer.Option(
        [],
        "--subject-prefix",
        help="OLD=NEW: subjects under OLD go under NEW (a stream beside the old one needs "
        "its own subjects), e.g. context=restored",
    ),
    retention: str | None = typer.Option(
        None,
        "--retention",
        help="forever | age | age+compaction for the new stream (default: the source's); "
        "how compaction is turned on for a stream created keep-forever",
    ),
    max_age_s: float = typer.Option(
        0.0, "--max-age-s", min=0.0, max=float(MAX_AGE_S), help="With --retention"
    ),
    domain: str | None = DOMAIN,
    timeout: float = TIMEOUT,
    as_json: bool = JSON,
) -> None:
    """Rebuild the stream from archive + live tail into the new stream TARGET: every
    message with its sequence, headers and bytes (the disaster-recovery path)."""
    _json(as_json)
    prefixes: dict[str, str] = {}
    for value in subject_prefix:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            output.fail(
                USAGE,
                "usage",
                f"--subject-prefix {value!r}: expected OLD=NEW",
                field="--subject-prefix",
            )
        prefixes[old] = new
    if not STREAM_NAME.fullmatch(target):
        output.fail(
            USAGE,
            "usage",
            f"{target!r} is not a stream name (letters, digits, '-' and '_')",
            field="TARGET",
        )
    if retention is not None and retention not in RETENTIONS:
        output.fail(
            USAGE,
            "usage",
            f"--retention {retention!r}: one of {', '.join(RETENTIONS)}",
            field="--retention",
        )
    # --retention age without --max-age-s is left to the restore (after connecting):
    # run again onto a stream it restored already, "restored already, nothing changed"
    # (age+compaction records no max age) or refused naming the option it was given.

    async def work(p: Projection, s: ProjectorSettings) -> Any:
        from jetsource.archive.history import open_archive
        from jetsource.archive.restore import restore as restore_stream
        from jetsource.core.errors import JetsourceError
        from jetsource.eventstore.jetstream import stream_config

        store = _store(p, domain)
        try:
            source = (await store.stream_info())["config"]
        except JetsourceError:
            source = stream_config(store.settings)  # the source is gone: as configured
        archive = open_archive(s, store.settings.stream)
        timeout_s = store.settings.request_timeout_s
        return await restore_stream(
            store._replies,
            archive,
            source,
            target,
            prefixes,
            timeout_s,
            progress=update,
            retention=retention,
            max_age_s=max_age_s,
        )

    from jetsource.cli.projector import _progress

    # Progress on stderr as `streams restore` shows it (it was silent for minutes), and
    # a Ctrl-C that says the truth: run again, it goes on with the stream it left.
    with _progress(f"archive restore into {target}") as update:
        report = _run(
            work,
            timeout,
            as_json,
            interrupted=f"stopped midway: {target} is partly written; run the same restore "
            "again to go on where it stopped",
        )
    if report.already_restored:  # run again, after or beside the one that wrote it: exit 0
        said = (
            f"{report.target} was restored from {report.source} already (sequences "
            f"{report.first_seq}..{report.last_seq}): nothing changed"
        )
        if output.mode() == output.Mode.json:
            _warn(said)
            output.emit_json(asdict(report))
        else:
            output.line(said)
        return
    if output.mode() == output.Mode.json:
        output.emit_json(asdict(report))
        return
    output.line(
        f"{report.target}: sequences {report.first_seq}..{report.last_seq} restored "
        f"({report.from_archive} from the archive, {report.from_live} from the live stream, "
        f"{output.count(report.gaps, 'gap')} kept)"
    )
