"""`jetsource sessions`: the event catalog, and sessions read from the process ledger.

    jetsource sessions catalog [--output json]
    jetsource sessions list [--status active] [--search TEXT] [--limit N]
    jetsource sessions show ID
    jetsource sessions export ID [--after SEQ] > session.jsonl
    jetsource sessions follow ID [--after SEQ] [--no-stop]
    jetsource sessions prune --older-than 30d --keep 1000 [--dry-run] [--every 1h]

Settings: ``JETSOURCE_SESSIONS__...`` (stream, validation, interrupted_after_s,
prune_older_than_s, prune_keep, prune_every_s) and the shared NATS ones.
Exit codes: 0 ok, 1 refused (unknown session, purge denied), 2 usage, 3 unavailable,
130 stopped by Ctrl-C or SIGTERM (saying what it left and how to go on).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from jetsource.cli import output as out
from jetsource.cli.output import Mode
from jetsource.core import aio

if TYPE_CHECKING:
    from jetsource.domains.sessions.connect import SessionsClient
    from jetsource.domains.sessions.record import SessionRecord

app = typer.Typer(
    help="Sessions: runs of commands recorded on the process ledger, and their event catalog.",
    no_args_is_help=True,
)

T = TypeVar("T")
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as the other groups exit
OUTPUT = typer.Option(
    None, "--output", "-o", case_sensitive=False, help="table, plain or json (overrides the global)"
)
JSON = typer.Option(False, "--json", help="JSON on stdout, errors too (as --output json)")
# export and follow always print JSON lines: -o / --json choose how errors are written
ERRORS_AS = typer.Option(
    None, "--output", "-o", case_sensitive=False, help="json: errors as JSON on stderr"
)
ERRORS_JSON = typer.Option(False, "--json", help="errors as JSON on stderr (as --output json)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
# The record's STATUSES, for the help text: the domain's modules (protobuf, the NATS
# client) are imported by the commands that run, not for `--help` (a unit test holds
# the two equal).
STATUSES = ("active", "completed", "failed", "interrupted")


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 30d, 12h, 90m, 45s)")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds * 1e9 > out.I64:  # ages are int64 nanoseconds: 100000w would wrap
        raise typer.BadParameter(f"{text!r} is longer than 292 years (e.g. 30d, 12h, 90m, 45s)")
    return seconds


def _duration_option(flag: str, text: str) -> float:
    """``parse_duration`` for an option: a bad one is a usage error naming the flag
    (JSON with ``-o json``), not Click's box."""
    try:
        return parse_duration(text)
    except typer.BadParameter as exc:
        out.fail(out.USAGE, "INVALID_ARGUMENT", f"{flag}: {exc.message}", field=flag)


def _use(override: Mode | None, as_json: bool = False) -> None:
    if as_json:
        out.set_mode(Mode.json)
    elif override is not None:
        out.set_mode(override)


def _session_id(session_id: str) -> None:
    """A malformed session id refused before anything connects, naming session_id: it
    was checked by the first read, so while NATS or the sessions stream was away the
    answer was UNAVAILABLE or FAILED_PRECONDITION for an id no session has."""
    from jetsource.core.errors import ValidationError
    from jetsource.core.ids import validate_aggregate_id

    try:
        validate_aggregate_id(session_id, field="session_id")
    except ValidationError as exc:
        out.fail(out.REFUSED, "INVALID_ARGUMENT", str(exc), field="session_id")


def _run(
    work: Callable[[SessionsClient], Coroutine[Any, Any, T]],
    stopped: Callable[[], str] = lambda: "stopped (Ctrl-C); nothing was changed",
) -> T:
    """``work`` on a connected client, its errors as the documented exit codes; Ctrl-C
    is exit 130 with ``stopped()`` (what it left, and how to go on) on stderr."""
    import grpc

    from jetsource.cli.streams import (
        NatsUnreachableError,
        settings_checked,
        unreachable_message,
        wait_for_nats,
    )
    from jetsource.core.errors import (
        AccessDeniedError,
        CorruptEventError,
        EventStoreUnavailableError,
        StreamMissingError,
        ValidationError,
    )
    from jetsource.core.settings import redact_url
    from jetsource.domains.sessions.connect import open_sessions
    from jetsource.domains.sessions.service import PruneDeniedError, SessionNotFoundError
    from jetsource.domains.sessions.settings import SessionsAppSettings
    from jetsource.eventstore.bootstrap import require_jetstream
    from jetsource.eventstore.jsapi import NoRespondersError

    settings = SessionsAppSettings.load()
    try:  # the settings first (the TLS files): said as such whatever NATS is
        settings_checked(settings)
    except AccessDeniedError as exc:
        out.fail(out.REFUSED, "UNAUTHENTICATED", str(exc))

    async def main() -> T:
        try:
            async with asyncio.timeout(settings.nats.connect_timeout_s + 1):
                # A closed port (every server refuses) is said at once: it took the
                # whole wait and nats-py's reconnects.
                await wait_for_nats(
                    settings.nats_url(),
                    asyncio.get_running_loop().time() + settings.nats.connect_timeout_s + 1,
                    refused_ends=True,
                )
                opened = open_sessions(settings)
                client = await opened.__aenter__()
        except NatsUnreachableError as exc:
            if exc.refused:  # said at once: "no connection within 6 s" was not so
                within_s = settings.nats.connect_timeout_s + 1
                message = unreachable_message(settings.nats_url(), exc, within_s)
            else:
                from jetsource.devstack.probes import why_unreachable

                within = f"no connection within {settings.nats.connect_timeout_s + 1:g} s"
                message = (
                    f"NATS at {redact_url(settings.nats_url())} did not answer: "
                    f"{within}{why_unreachable(settings.nats_url())}"
                )
            out.fail(out.UNAVAILABLE, "UNAVAILABLE", message, hint="JETSOURCE_NATS__URL")
        except (TimeoutError, OSError) as exc:
            from jetsource.devstack.probes import why_unreachable

            within = f"no connection within {settings.nats.connect_timeout_s + 1:g} s"
            out.fail(
                out.UNAVAILABLE,
                "UNAVAILABLE",
                f"NATS at {redact_url(settings.nats_url())} did not answer: "
                f"{str(exc) or within + why_unreachable(settings.nats_url())}",
                hint="JETSOURCE_NATS__URL",
            )
        try:
            await require_jetstream(client.nc, settings)
            return await work(client)
        finally:
            await opened.__aexit__(None, None, None)

    try:
        return aio.run(main())
    except SessionNotFoundError as exc:
        out.fail(out.REFUSED, "NOT_FOUND", str(exc).strip("'\""))
    except AccessDeniedError as exc:  # NATS refused the credentials: was INTERNAL, "a bug"
        out.fail(out.REFUSED, "UNAUTHENTICATED", str(exc))
    except ValidationError as exc:
        # A malformed session id (or other input the domain refuses): one line.
        field = exc.field or None
        out.fail(out.REFUSED, "INVALID_ARGUMENT", str(exc), field=field)
    except (StreamMissingError, NoRespondersError) as exc:  # (a direct get: NoResponders)
        out.missing("FAILED_PRECONDITION", out.stream_named(str(exc)) or settings.sessions.stream)
    except EventStoreUnavailableError as exc:
        out.fail(out.UNAVAILABLE, "UNAVAILABLE", str(exc))
    except CorruptEventError as exc:  # a poisoned session: named, with the repair
        out.fail(out.exit_code(grpc.StatusCode.DATA_LOSS), "DATA_LOSS", str(exc))
    except grpc.aio.AioRpcError as exc:  # import --observer: what the observer answered
        code = exc.code()
        out.fail(
            out.exit_code(code, exc.details() or ""), code.name, exc.details() or code.name.lower()
        )
    except PruneDeniedError as exc:
        out.fail(out.REFUSED, "PERMISSION_DENIED", str(exc))
    except KeyboardInterrupt:
        # It ended with exit 130 and nothing said: how to go on is the user's to guess.
        out.fail(INTERRUPTED, "CANCELLED", stopped())


class LineTooLargeError(Exception):
    """An import's line whose event the stream cannot hold (line number, what it said)."""

    def __init__(self, line: int, said: str) -> None:
        super().__init__(said)
        self.line, self.said = line, said


def _address_problem(value: str) -> str | None:
    """What is wrong with a gRPC target given on the command line, or None. A target
    with a scheme (``dns:///host:port``, ``unix:/path``, ``unix:///path``,
    ``ipv6:[::1]:50051``) is gRPC's to resolve, as every other client's ``--target``
    (``output.target``): only said empty or holding a space. A plain ``host:port`` must
    name a port 1 to 65535: gRPC takes an empty target as UNKNOWN, a port past 65535
    modulo 65536 (99999 dials 34463) and a host without a port as port 443."""
    try:
        out.target(value)
    except typer.BadParameter:
        return "is not host:port (empty, or holds a space)"
    scheme = _SCHEME.match(value)
    if scheme is not None:
        if scheme.group(1).lower() in ("http", "https"):
            return (
                "is an http(s) URL: give host:port without a scheme (or a gRPC target "
                "such as dns:///host:port or unix:/path)"
            )
        if scheme.group(1).lower() in _GRPC_SCHEMES:
            return None
        # Not a scheme gRPC resolves (``host:abc``): checked as the host:port it is.
    host, colon, port = value.rpartition(":")
    if not colon or not host or host == "[]":
        return "is not host:port: it names no port"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"is not host:port: the port {port!r} is not 1 to 65535"
    return None


# A gRPC target with a scheme (RFC 3986's letters), not a host:port: what follows the
# first colon is not a port (``localhost:50051`` and ``example.com:443`` are plain).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(?![0-9]*$)")
# The name resolvers grpcio ships (a target of another scheme is not one it can dial).
_GRPC_SCHEMES = frozenset({"dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock", "xds"})


def _lines(stream: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a binary stream, without their ends, each ending at '\r\n', a lone
    '\r' or '\n' (Python's universal newlines, what the import read as text took):
    9125e05 split at '\n' only, so a file of lone-CR line endings (classic Mac, some
    exporters) became one line, refused. '\r' is no byte of a multi-byte UTF-8
    character: each line is still decoded by itself, and numbered as an editor does."""
    for chunk in stream:
        ended = chunk.endswith(b"\n")
        body = chunk[: -2 if chunk.endswith(b"\r\n") else -1] if ended else chunk
        parts = body.split(b"\r")
        if not ended and parts[-1] == b"":  # the last line ended by '\r' (or nothing)
            parts.pop()
        yield from parts


class LineRefusedError(Exception):
    """An import's line whose event the observer refused as bad input (line number,
    what it said of the event, its ``events[i].`` left out)."""

    def __init__(self, line: int, said: str) -> None:
        super().__init__(said)
        self.line, self.said = line, said


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """JSON lines into a pipe whose reader left (``| head -1``): done, exit 0, as
    ``ctx watch`` and ``process watch`` end (it was exit 1, saying nothing)."""
    try:
        yield
    except BrokenPipeError:
        from jetsource.cli.ctx import _quiet_stdout

        _quiet_stdout()
        raise typer.Exit(0) from None


def _ts(ns: int) -> str:
    from jetsource.domains.sessions.format import format_ts

    return format_ts(ns) if ns else ""


def _duration(record: SessionRecord) -> str:
    d = record.duration_s
    return "" if d is None else f"{d:.1f}s"


@app.command()
def catalog(output: Mode | None = OUTPUT, as_json: bool = JSON) -> None:
    """The event catalog: every event type with its JSON Schema (versioned)."""
    from jetsource.domains.sessions.catalog import load_catalog

    _use(output, as_json)
    c = load_catalog()
    if out.mode() == Mode.json:
        out.emit_json(c.as_document())
        return
    out.line(f"{c.name} {c.version}")
    rows = []
    for spec in c.events.values():
        required = ", ".join(spec.schema.get("required", []))
        rows.append((spec.group, spec.type, required, spec.description))
    out.table("", ["group", "type", "required data", "description"], rows)


@app.command("list")
def list_sessions(
    status: list[str] = typer.Option([], "--status", "-s", help=f"one of {', '.join(STATUSES)}"),
    search: str = typer.Option("", "--search", "-q", help="text in the id or the command"),
    limit: int = typer.Option(50, "--limit", "-n", min=0, help="newest N (0: all)"),
    output: Mode | None = OUTPUT,
    as_json: bool = JSON,
) -> None:
    """Sessions, newest first: status, command, start, duration, event count, error."""
    _use(output, as_json)
    for s in status:
        if s not in STATUSES:
            out.fail(
                out.USAGE,
                "INVALID_ARGUMENT",
                f"--status: {s!r} is not one of {', '.join(STATUSES)}",
                field="--status",
            )

    async def work(c: SessionsClient) -> list[SessionRecord]:
        # the error column (and JSON's error) as `show` says it: read for these rows
        return await c.sessions.list_sessions(status, search, limit, with_errors=True)

    records = _run(work)
    if out.mode() == Mode.json:
        out.emit_json([r.to_dict() for r in records])
        return
    out.table(
        "sessions",
        ["session", "status", "command", "started", "duration", "events", "error"],
        [
            # the error as `show` says it (an interrupted or completed session's too)
            (
                r.session_id,
                r.status,
                r.command,
                _ts(r.started_ns),
                _duration(r),
                r.event_count,
                r.error,
            )
            for r in records
        ],
    )


@app.command()
def show(session_id: str, output: Mode | None = OUTPUT, as_json: bool = JSON) -> None:
    """One session's record: command and metadata, times, status, count, snapshot."""
    _use(output, as_json)
    _session_id(session_id)

    async def work(c: SessionsClient) -> SessionRecord:
        record, _, _ = await c.sessions.show(session_id)
        return record

    record = _run(work)
    if out.mode() == Mode.json:
        out.emit_json(record.to_dict())
        return
    out.fields(
        [
            ("session", record.session_id),
            ("command", record.command),
            ("argv", record.metadata.get("argv")),
            ("status", record.status),
            ("started", _ts(record.started_ns)),
            ("ended", _ts(record.ended_ns)),
            ("duration", _duration(record)),
            ("events", record.event_count),
            ("snapshot", record.snapshot),
            ("error", record.error),
        ]
    )


@app.command()
def export(
    session_id: str,
    after: int = typer.Option(
        0, "--after", min=0, max=out.I64, help="only events with seq above this"
    ),
    output: Mode | None = ERRORS_AS,
    as_json: bool = ERRORS_JSON,
) -> None:
    """The session's events as JSON lines (the user-facing event format)."""
    _use(output, as_json)
    _session_id(session_id)

    async def work(c: SessionsClient) -> None:
        for e in await c.sessions.export(session_id, after):
            sys.stdout.write(e.to_json() + "\n")

    with _reader_may_leave():
        _run(work)
        sys.stdout.flush()


@app.command()
def follow(
    session_id: str,
    after: int = typer.Option(0, "--after", min=0, max=out.I64, help="start after this seq"),
    stop: bool = typer.Option(True, "--stop/--no-stop", help="end after session_ended"),
    output: Mode | None = ERRORS_AS,
    as_json: bool = ERRORS_JSON,
) -> None:
    """The session's events as JSON lines, from a seq, then live as they commit."""
    _use(output, as_json)
    _session_id(session_id)

    shown = [after]  # the last seq printed

    async def work(c: SessionsClient) -> None:
        async for r in c.sessions.follow(session_id, after, until_end=stop):
            sys.stdout.write(r.event.to_json() + "\n")
            sys.stdout.flush()
            shown[0] = r.event.seq

    with _reader_may_leave():
        _run(
            work,
            lambda: (
                f"stopped (Ctrl-C) after seq {shown[0]}; `jetsource sessions follow "
                f"{session_id} --after {shown[0]}` goes on from there"
            ),
        )


@app.command()
def prune(
    older_than: str = typer.Option(
        None,
        "--older-than",
        help="ended longer ago than this (30d, 12h; 0: no age rule); default: the setting",
    ),
    keep: int = typer.Option(
        None,
        "--keep",
        min=0,
        help="keep the newest N ended sessions (0: no count rule); default: the setting",
    ),
    unended_after: str = typer.Option(
        None,
        "--unended-after",
        help="a session with no ending counts as ended once quiet this long (1d; more "
        "than any emitter's heartbeat); default: JETSOURCE_SESSIONS__PRUNE_UNENDED_AFTER_S",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would go, remove nothing"),
    every: str = typer.Option(
        None,
        "--every",
        help="run again at this interval until stopped (the periodic pruner; default: "
        "JETSOURCE_SESSIONS__PRUNE_EVERY_S, 0 = once)",
    ),
    output: Mode | None = OUTPUT,
    as_json: bool = JSON,
) -> None:
    """Remove ended sessions, with every process nested under them, by age and count.

    Ended: completed, failed or interrupted (cancelled, Ctrl-C) by the session's
    ending, and a session with no ending (its emitter gone) once nothing has been
    recorded for it for --unended-after (default 1 day; its end is its last event).
    Active sessions are never removed.

    Each tree is announced by a tombstone on the ledger (the read models forget it),
    then purged from the stream with its idempotency claims; a run killed midway is
    finished by the next. Needs the pruner's NATS user (the only one allowed to purge)."""
    from jetsource.domains.sessions.settings import SessionsAppSettings

    _use(output, as_json)
    age = _duration_option("--older-than", older_than) if older_than is not None else None
    unended = (
        _duration_option("--unended-after", unended_after) if unended_after is not None else None
    )
    if unended is not None and unended <= 0:
        out.fail(
            out.USAGE,
            "INVALID_ARGUMENT",
            f"--unended-after: {unended_after!r}; a session with no ending needs a time "
            "quiet (more than any emitter's heartbeat) before it counts as ended",
            field="--unended-after",
        )
    interval = (
        _duration_option("--every", every)
        if every is not None
        else SessionsAppSettings.load().sessions.prune_every_s
    )
    if 0 < interval < 1:  # a pruner looping faster than this only hammers NATS
        out.fail(
            out.USAGE,
            "INVALID_ARGUMENT",
            f"--every: {interval:g} s; 0 (once) or at least 1s",
            field="--every",
        )

    async def work(c: SessionsClient) -> None:
        while True:
            report = await c.sessions.prune(c.purger, age, keep, dry_run, unended)
            if out.mode() == Mode.json:
                out.emit_json(report.to_dict())
            else:
                verb = "would remove" if dry_run else "removed"
                if report.resumed:
                    out.line(
                        f"finished {out.count(report.resumed, 'prune')} an interrupted run "
                        "had begun"
                    )
                out.line(
                    f"{verb} {out.count(len(report.pruned), 'session')} "
                    f"({out.count(report.processes, 'process')}, "
                    f"{out.count(report.events, 'event')}); kept {report.kept}"
                )
                if report.uncounted:
                    out.line(
                        f"events not counted (a corrupt event, no stream to count on): "
                        f"{', '.join(report.uncounted)}"
                    )
                for r in report.pruned:
                    # A session with no ending ended, for the prune, at its last event.
                    end = _ts(r.ended_ns or r.last_recorded_ns)
                    out.line(f"  {r.session_id}\t{r.status}\t{end}\t{r.command}")
            if not interval:
                return
            await asyncio.sleep(interval)

    _run(
        work,
        lambda: (
            "stopped (Ctrl-C); nothing was removed"
            if dry_run
            else "stopped (Ctrl-C); a session it had begun to remove is finished by the next "
            "`jetsource sessions prune`"
        ),
    )


def tui(
    session_id: str = typer.Argument("", help="open this session directly"),
    query: str = typer.Option(
        None, "--query", help="context query service host:port (default: the CLI's)"
    ),
    omni: str = typer.Option(
        None,
        "--omni",
        help="omni query service host:port (default: JETSOURCE_INGEST__GRPC_PORT, 50054)",
    ),
) -> None:
    """The terminal UI: sessions, processes, contexts, messages, dead letters.

    Keys: s sessions, p processes, c contexts, m messages, d dead letters, ? every key, q quit; / to type a filter or an id."""  # noqa: E501
    from jetsource.cli.ctx import _target
    from jetsource.domains.sessions.settings import SessionsAppSettings
    from jetsource.tui.app import run

    # An empty --query fell back to the default service, as --omni's check says it must
    # not; a port past 65535 was dialled modulo 65536.
    for flag, value in (("--query", query), ("--omni", omni)):
        if value is not None and (problem := _address_problem(value)) is not None:
            raise typer.BadParameter(f"{value!r} {problem}", param_hint=f"'{flag}'")
    address = query or _target("query", None, None).address
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Piped or in a script it drew escape codes into the pipe and never ended.
        out.fail(
            out.USAGE,
            "INVALID_ARGUMENT",
            "jetsource tui needs a terminal (stdin and stdout); in a script read the same "
            "with `jetsource sessions list`, `process list`, `ctx list` (-o json)",
        )
    run(SessionsAppSettings.load(), address, open_session=session_id, omni_address=omni)


@app.command("import")
def import_(
    path: str = typer.Argument(..., help="a JSONL file of session events ('-' for stdin)"),
    observer: str = typer.Option(
        None, "--observer", help="record through the observer at host:port (default: the stream)"
    ),
    output: Mode | None = OUTPUT,
    as_json: bool = JSON,
) -> None:
    """Record session events from JSON lines (the format `export` and `follow` print).
    Idempotent by (session, seq), whatever recorded the session first (the emitter,
    an earlier import): a line at a seq the ledger holds is already recorded, and only
    the lines after the session's last seq are appended, at exactly their seq. A line
    that says something else than the ledger at its seq, or leaves a gap before it, is
    refused naming the line (exit 1); a bad line is refused naming its line and field
    (exit 2). Nothing of the file is recorded then. Known types are checked against
    the catalog per JETSOURCE_SESSIONS__VALIDATION."""
    from jetsource.core.errors import ConcurrencyError, EventTooLargeError
    from jetsource.domains.sessions.catalog import load_catalog
    from jetsource.domains.sessions.format import EventFormatError, SessionEvent, to_canonical
    from jetsource.domains.sessions.importing import ImportConflictError, Line, plan_import
    from jetsource.domains.sessions.settings import SessionsAppSettings

    _use(output, as_json)
    if observer is not None and (problem := _address_problem(observer)) is not None:
        # Said before the file is read or anything connects: an empty one was gRPC's
        # UNKNOWN (exit 1, C-core log lines before the JSON), port 99999 was dialled as
        # 34463 (the refusal named that port), a URL was UNAVAILABLE (exit 3).
        out.fail(
            out.USAGE, "INVALID_ARGUMENT", f"--observer: {observer!r} {problem}", field="--observer"
        )
    settings = SessionsAppSettings.load()
    try:
        # Bytes, each line decoded by itself: a text stream decodes ahead in chunks, so
        # a byte that is not UTF-8 on line 7 was said to be on line 1. Lines end at
        # '\r\n', '\r' or '\n', as the text stream's universal newlines had them
        # (_lines).
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        out.fail(out.USAGE, "INVALID_ARGUMENT", f"{path}: {exc.strerror or exc}")
    lines: list[Line] = []
    try:
        with stream:
            for number, raw in enumerate(_lines(stream), 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    out.fail(
                        out.USAGE,
                        "INVALID_ARGUMENT",
                        f"{path}: line {number} is not UTF-8 text (byte {exc.start + 1} of "
                        "the line)",
                        field=f"line {number}",
                        line=number,
                    )
                if not text.strip():
                    continue
                try:
                    event = SessionEvent.from_json(text)
                    load_catalog().check(event.type, event.data, settings.sessions.validation)
                except (EventFormatError, ValueError) as exc:
                    out.fail(
                        out.USAGE,
                        "INVALID_ARGUMENT",
                        f"line {number}: {exc}",
                        field=f"line {number}",
                        line=number,
                    )
                lines.append(Line(number, event))
    except OSError as exc:
        out.fail(out.USAGE, "INVALID_ARGUMENT", f"{path}: {exc.strerror or exc}")

    async def work(c: SessionsClient) -> list[Any]:
        from jetsource.domains.sessions.ledger import recorded_at

        # One read of the ledger's stream per session (not the query reader: its read
        # models may lag behind what is recorded).
        plans = await plan_import(lines, lambda sid, seq: recorded_at(c.store, sid, seq))
        new = [line for plan in plans for line in plan.new]
        events = [to_canonical(line.event, source="jetsource sessions import") for line in new]
        if not events:
            return []
        if observer is None:  # at exactly their seqs, or ConcurrencyError
            try:
                return await c.writer.record(events, {p.session: p.last for p in plans if p.new})
            except EventTooLargeError as exc:
                if exc.index is None:
                    raise
                # A bad line as any other, by its number (it said "event 1", its place
                # in the append, exit 1)
                raise LineTooLargeError(new[exc.index].number, str(exc)) from None
        from jetsource._gen.process.v1.observer_pb2_grpc import ObserverServiceStub
        from jetsource.client import open_channel
        from jetsource.domains.sessions.ledger import EventRefusedError, ObserverWriter

        # TLS and the token as every client: JETSOURCE_CLIENT__TLS__..., __TOKEN.
        channel, metadata = open_channel(observer, settings.client)
        positions: list[Any] = []
        async with channel:
            writer = ObserverWriter(
                ObserverServiceStub(channel), settings.client.timeout_s, metadata
            )
            # An event the observer refuses is named by its line in the file, as on the
            # stream: the writer's errors name it by its place among ``events`` (the
            # observer's events[i] counts from its request: a piece, or a half of one
            # split for gRPC's message limit, which named the wrong line).
            try:
                positions += await writer.record(events)
            except EventTooLargeError as exc:
                if exc.index is None or not 0 <= exc.index < len(new):
                    raise
                raise LineTooLargeError(new[exc.index].number, str(exc)) from None
            except EventRefusedError as exc:
                if not 0 <= exc.index < len(new):
                    raise
                raise LineRefusedError(new[exc.index].number, exc.said) from None
        # The observer appends after whatever is there: a session recorded to since it
        # was read has the lines elsewhere than at their seq. Say so.
        for line, p in zip(new, positions, strict=True):
            if not p.duplicate and p.process_seq != line.event.seq:
                raise ImportConflictError(
                    line.number,
                    f"session {line.event.session} was recorded to while importing: this "
                    f"line is recorded at seq {p.process_seq}, not {line.event.seq}",
                )
        return positions

    try:
        positions = (
            _run(
                work,
                lambda: (
                    "stopped (Ctrl-C); what was recorded stays recorded: the same "
                    "import again appends only the rest"
                ),
            )
            if lines
            else []
        )
    except ImportConflictError as exc:
        out.fail(
            out.REFUSED, "FAILED_PRECONDITION", str(exc), field=f"line {exc.line}", line=exc.line
        )
    except LineTooLargeError as exc:
        said = re.sub(r"^event \d+ ", "the event ", exc.said)
        # The observer's refusal names the event's place in its request: the line is said.
        said = re.sub(r"^events\[\d+\]\.", "", said)
        out.fail(
            out.USAGE,
            "INVALID_ARGUMENT",
            f"line {exc.line}: {said} (lines of the file before it may be recorded: the "
            "import again appends only the rest)",
            field=f"line {exc.line}",
            line=exc.line,
        )
    except LineRefusedError as exc:
        out.fail(
            out.USAGE,
            "INVALID_ARGUMENT",
            f"line {exc.line}: {exc.said} (the observer refused it; lines of the file before "
            "it may be recorded: the import again appends only the rest)",
            field=f"line {exc.line}",
            line=exc.line,
        )
    except ConcurrencyError as exc:
        out.fail(
            out.REFUSED,
            "ABORTED",
            f"session {exc.aggregate_id} was recorded to while importing (at seq "
            f"{exc.actual} where the import expected {exc.expected}); import again",
        )
    appended = sum(1 for p in positions if not p.duplicate)
    if out.mode() == Mode.json:
        out.emit_json({"events": len(lines), "appended": appended})
    else:
        out.line(f"{out.count(len(lines), 'event')}, {appended} appended, {len(lines) - appended} "
                 "already recorded")  # fmt: skip
