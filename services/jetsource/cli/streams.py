"""`jetsource streams ensure`: provision what jetsource keeps in JetStream;
`jetsource streams backup DIR` / `restore DIR`: its streams to files and back.

Creates the event stream of every domain the registry holds (JETSOURCE_PROJECTOR__DOMAINS:
whichever they are, the context domain or not), the snapshot stream, the dead-letter
stream and the read-model control bucket, or brings existing streams to the configured
settings (replicas, limits, duplicate window). It never deletes or purges anything, so
it is safe to run on every deploy: the Helm chart runs it as a pre-install/pre-upgrade
hook and docker compose as a one-shot service before the services start. Settings
as for the projector (``JETSOURCE_NATS__...``, ``JETSOURCE_EVENTSTORE__...``,
``JETSOURCE_SNAPSHOTS__...``, ``JETSOURCE_PROJECTOR__DLQ_STREAM`` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import typer

from jetsource.cli import output
from jetsource.cli.output import REFUSED, UNAVAILABLE, USAGE
from jetsource.cli.projector import _json, connect_timeout_s
from jetsource.core import aio

if TYPE_CHECKING:
    from jetsource.cli.stream_admin import Provisioned, StreamBackup, StreamRestore
    from jetsource.core.settings import JetsourceSettings
    from jetsource.projection.settings import ProjectorSettings

app = typer.Typer(
    help="JetStream streams: provision them (idempotent), back them up, restore them.",
    no_args_is_help=True,
)


class NatsUnreachableError(Exception):
    """No server of the URL took a TCP connection; ``refused``: each refused it
    (nothing listens), said at once rather than after a wait."""

    def __init__(self, message: str = "", refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def unreachable_message(url: str, exc: NatsUnreachableError, within_s: float) -> str:
    """What a command says when NATS took no connection: ``NATS at URL is not reachable
    (HOST:PORT: Connection refused)`` when every server refused it (said at once: it
    said "did not answer within 10 s", which was not so), else ``NATS at URL did not
    answer within N s`` and why no connection came up, when it is known."""
    from jetsource.core.settings import redact_url
    from jetsource.devstack.probes import unreachable, why_unreachable

    where = redact_url(url)
    if exc.refused and (why := unreachable(url)):
        return f"NATS at {where} is {why}"
    return f"NATS at {where} did not answer within {within_s:g} s" + why_unreachable(url)


def settings_checked(settings: JetsourceSettings) -> None:
    """The checks connecting makes of the settings alone (the TLS files load), made
    before the first TCP try: a bad setting is said as one whatever NATS is, not as a
    server that is not reachable."""
    from jetsource.eventstore.bootstrap import nats_options

    nats_options(settings)


async def nats_answers_within(settings: JetsourceSettings, deadline: float) -> None:
    """NATS, which took a TCP connection, answers a connect (its INFO and the
    handshake) by ``deadline`` (loop time), else NatsUnreachableError: a server that
    takes the connection and never answers held a command that connects later, inside
    its work, for its whole --timeout (an hour for ``streams backup``)."""
    from jetsource.eventstore.bootstrap import connect, release

    budget = max(deadline - asyncio.get_running_loop().time(), 0.1)
    try:
        nc = await aio.wait_for(connect(settings), budget)
    except TimeoutError:
        raise NatsUnreachableError("no NATS handshake") from None
    await release(nc)


# How long a person's command tries a refused connection again (a few tries, backing off).
REFUSED_GRACE_S = 1.5


def refused_wait_s() -> float:
    """How long an admin command tries again a connection every server refuses:
    ``JETSOURCE_ADMIN_REFUSED_WAIT_S`` when set; else REFUSED_GRACE_S (1.5 s) when stdin
    is a terminal, a person who typed it; else the whole connect wait (a CronJob, the
    Helm admin Job, a script: a NATS pod that restarts refuses connections for a few
    seconds, and these waited it out before 11578ab)."""
    from jetsource.cli.projector import env_seconds

    if os.environ.get("JETSOURCE_ADMIN_REFUSED_WAIT_S", "").strip():
        return env_seconds("JETSOURCE_ADMIN_REFUSED_WAIT_S", REFUSED_GRACE_S)
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        interactive = False
    return REFUSED_GRACE_S if interactive else math.inf


# asyncio's connect to a host of several addresses (localhost: ::1 and 127.0.0.1) that
# all failed: a plain OSError naming each, "[Errno 111] Connect call failed (...)", or
# with the error's own words when connect() failed at once ("[Errno 99] Cannot assign
# requested address": ::1 where IPv6 is off).
_EACH_FAILED = re.compile(
    r"Multiple exceptions: "
    r"(\[Errno (\d+)\] (Connect call failed \([^()]*\)|[^,()\[\]]+)(, |$))+"
)
_ERRNO = re.compile(r"\[Errno (\d+)\] ")
# Each address of a host that refused, or that this host cannot reach at all.
_NOTHING_LISTENS = {errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH}


def refused_connection(exc: BaseException) -> bool:
    """``exc`` (from a TCP connect) says nothing listens: a ConnectionRefusedError, or
    the OSError asyncio raises for a host of several addresses (a dual-stack
    ``localhost``) when at least one refused and each other one was not routable (::1
    with IPv6 off says EADDRNOTAVAIL or ENETUNREACH, 127.0.0.1 refuses)."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    if type(exc) is not OSError or not _EACH_FAILED.fullmatch(text := str(exc)):
        return False
    codes = {int(code) for code in _ERRNO.findall(text)}
    return errno.ECONNREFUSED in codes and codes <= _NOTHING_LISTENS


# How often a long wait for NATS says it is still waiting (JETSOURCE_PROGRESS_EVERY_S
# moves it, as it moves every long command's progress).
WAITING_EVERY_S = 10.0


async def wait_for_nats(
    url: str,
    deadline: float,
    waiting: Callable[[float, BaseException | None], None] | None = None,
    every_s: float = WAITING_EVERY_S,
    refused_ends: bool = False,
) -> None:
    """Return once one of the NATS servers (``url`` may list several, comma-separated)
    accepts a TCP connection; raise NatsUnreachableError at ``deadline`` (loop time).
    ``waiting(seconds waited, last error)`` is called when the first try fails and about
    every ``every_s`` seconds after. With ``refused_ends``, a refused connection (nothing
    listens on any server) is tried again only for ``refused_wait_s()``: 1.5 s when a
    person runs the command (an admin command against a closed port waited out its 10 s,
    12-16 s with the reconnects behind it, to say so), the whole wait when no terminal
    does (a CronJob or Helm Job rides out a NATS restart, which refuses connections for
    a few seconds); a server that does not answer in time is waited for until ``deadline``.

    nats-py waits for an absent server forever, and on Python 3.11 a connect given up on
    cannot always be cancelled (a refused attempt can swallow the cancellation), so a
    command that must stop in time checks the servers before it connects."""
    servers = []
    for part in url.split(","):
        split = urlsplit(part.strip())
        servers.append((split.hostname or "127.0.0.1", split.port or 4222))
    loop = asyncio.get_running_loop()
    last: BaseException | None = None
    started = loop.time()
    refused_until = started + refused_wait_s() if refused_ends else math.inf
    report_at = started
    pause = 0.1  # then 0.2, 0.4, 0.5...: a restarting server is caught soon
    while True:
        refused = 0
        for host, port in servers:
            budget = min(max(deadline - loop.time(), 0.1), 5.0)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
                # connection when the task is cancelled as it is made (SIGTERM or Ctrl-C
                # as NATS accepts), and the cancel is lost: the command went on for its
                # whole --timeout.
                async with asyncio.timeout(budget):
                    _, writer = await asyncio.open_connection(host, port)
            except (OSError, TimeoutError) as exc:
                last = exc
                refused += refused_connection(exc)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            aio.honour_cancel()
            return
        all_refused = refused == len(servers)
        now = loop.time()
        nap = pause
        if all_refused and refused_until < deadline:
            # The grace is tried to its end: it gave up a pause early (1.2 s of 1.5).
            if now >= refused_until:
                raise NatsUnreachableError(repr(last), refused=True)
            nap = min(pause, refused_until - now)
        elif now + pause >= deadline:
            raise NatsUnreachableError(repr(last), refused=all_refused)
        if waiting is not None and loop.time() >= report_at:
            waiting(loop.time() - started, last)
            while report_at <= loop.time():
                report_at += every_s
        await asyncio.sleep(nap)
        pause = min(pause * 2, 0.5)


@app.command()
def ensure(
    timeout: float = typer.Option(
        120.0, "--timeout", min=0.1, help="Give up after this many seconds (NATS unreachable)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON"),
) -> None:
    """Create or update the streams jetsource needs (idempotent).

    Every registered domain's event stream (JETSOURCE_PROJECTOR__DOMAINS), the snapshot
    and dead-letter streams and the read-model control bucket: created when missing,
    existing streams brought to the settings. Safe to run again: nothing is deleted,
    stored messages stay.
    """
    import json

    from jetsource.cli.projector import env_seconds
    from jetsource.cli.stream_admin import _note, ensure_all
    from jetsource.core.errors import AccessDeniedError, EventStoreUnavailableError
    from jetsource.core.settings import redact_url
    from jetsource.projection.bootstrap import projection_domains
    from jetsource.projection.settings import ProjectorSettings

    settings = ProjectorSettings.load()
    # The registered domains name the streams: a bad JETSOURCE_PROJECTOR__DOMAINS is
    # said at once, not after waiting up to --timeout for NATS (checked as `backup`
    # checks it: a registry with no domain too).
    projection_domains(settings)
    where = redact_url(settings.nats_url())
    json_out = _json(as_json)
    every_s = env_seconds("JETSOURCE_PROGRESS_EVERY_S", WAITING_EVERY_S)

    def waiting(waited: float, last: BaseException | None) -> None:
        if json_out:  # stderr stays JSON lines, as the error that may follow
            said = {"nats": where, "waited_s": round(waited), "timeout_s": timeout}
            if last is not None:
                said["error"] = type(last).__name__
            sys.stderr.write(json.dumps({"waiting": said}) + "\n")
            sys.stderr.flush()
            return
        why = f"; {type(last).__name__}" if last is not None else ""
        _note(f"waiting for NATS at {where} ({waited:.0f} s of {timeout:g} s{why})")

    async def go() -> list[Provisioned]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await wait_for_nats(settings.nats_url(), deadline, waiting, every_s)
        return await aio.wait_for(ensure_all(settings), max(deadline - loop.time(), 1.0))

    try:
        done = aio.run(go())
    except (NatsUnreachableError, TimeoutError) as exc:
        from jetsource.eventstore.jsapi import refused_instead

        # Unanswered because NATS refused its requests (permissions): not an outage.
        if refused := refused_instead(where, timeout + 5):
            output.fail(REFUSED, "access denied", str(refused))
        last = f" (last error: {exc})" if str(exc) else ""
        message = (
            f"NATS at {redact_url(settings.nats_url())} did not answer within {timeout:g} s{last}"
        )
        output.fail(UNAVAILABLE, "unavailable", message)
    except AccessDeniedError as exc:  # as every admin group says it (it was a repr)
        output.fail(REFUSED, "access denied", str(exc))
    except EventStoreUnavailableError as exc:  # JetStream off, a write it refused
        output.fail(UNAVAILABLE, "unavailable", str(exc), hint="JETSOURCE_NATS__URL")
    except _refusals(OSError) as exc:
        if refusal := output.refusal(exc):
            output.fail(UNAVAILABLE, "unavailable", refusal, hint="JETSOURCE_NATS__URL")
        output.fail(REFUSED, "refused", repr(exc))
    if json_out:
        output.emit_json([asdict(d) for d in done])
        return
    output.table(
        "streams",
        ("role", "stream", "action", "subjects", "replicas", "messages"),
        ((d.role, d.stream, d.action, d.subjects, d.replicas, d.messages) for d in done),
    )


def _refusals(*more: type[BaseException]) -> tuple[type[BaseException], ...]:
    """What a command's work raises when the server or the stored data refuse it (and
    ``more``)."""
    from nats import errors as nats_errors

    from jetsource.core.errors import JetsourceError
    from jetsource.eventstore import jsapi

    return (JetsourceError, jsapi.JsApiError, nats_errors.Error, *more)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            output.fail(USAGE, "usage", f"{option} {value!r}: expected OLD=NEW", field=option)
        pairs[old] = new
    return pairs


# Exit code of a command stopped by Ctrl-C (128 + SIGINT), as the shell reports it.
INTERRUPTED = 130


class NoAnswerError(Exception):
    """NATS stopped answering while the work ran (a request's own timeout, the
    connection closed): not the command's --timeout running out."""


def _no_answer() -> tuple[type[BaseException], ...]:
    """What a request to a NATS that went away raises (nats-py's and jsapi's request
    timeouts are TimeoutError, as the command's own deadline is: told apart by
    :func:`within`)."""
    from nats import errors as nats_errors

    return (
        TimeoutError,
        nats_errors.ConnectionClosedError,
        nats_errors.NoServersError,
        nats_errors.StaleConnectionError,
        nats_errors.ConnectionReconnectingError,
        nats_errors.OutboundBufferLimitError,
        nats_errors.UnexpectedEOF,
        ConnectionError,
    )


async def within(deadline_s: float, work: Awaitable[Any]) -> Any:
    """``work`` within ``deadline_s``: TimeoutError when that deadline passed, and
    :class:`NoAnswerError` when a request inside got no answer (NATS killed, a
    partition) before it, so the two are never reported as each other."""
    try:
        async with asyncio.timeout(deadline_s) as deadline:
            return await work
    except _no_answer() as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            raise
        said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise NoAnswerError(said) from exc


def no_answer_message(url: str, exc: BaseException) -> str:
    return f"NATS at {url} stopped answering while the command ran ({exc}); nothing more was done"


def _run(
    settings: ProjectorSettings,
    timeout: float,
    work: Callable[[], Awaitable[Any]],
    interrupted: Callable[[], str] | None = None,
    domains: bool = False,
) -> Any:
    """Run ``work`` once NATS answers (within ``JETSOURCE_ADMIN_CONNECT_TIMEOUT_S``, 10 s,
    or ``--timeout`` if shorter), all within ``--timeout``. Errors go to stderr (JSON
    with --json or -o json): exit 3 when NATS did not answer, stopped answering, or the
    work ran out of time (each said as such), 1 when it was refused, 130 on Ctrl-C or
    SIGTERM (``interrupted()`` says what was left). The settings are checked before
    NATS is tried (with ``domains``, the domains setting too: exit 2 naming it)."""
    from jetsource.cli.stream_admin import OptionError
    from jetsource.core.errors import AccessDeniedError, EventStoreUnavailableError
    from jetsource.core.settings import redact_url
    from jetsource.projection.bootstrap import DomainsError, projection_domains

    connect_s = min(timeout, connect_timeout_s())
    where = redact_url(settings.nats_url())
    try:  # the settings first: said as such whatever NATS is
        if domains:
            projection_domains(settings)
        settings_checked(settings)
    except DomainsError as exc:
        output.fail(USAGE, "usage", str(exc), field=exc.field)
    except AccessDeniedError as exc:
        output.fail(REFUSED, "access denied", str(exc))

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connected_by = loop.time() + connect_s
        await wait_for_nats(settings.nats_url(), connected_by, refused_ends=True)
        # The work connects inside: a silent server is given up on within connect_s.
        await nats_answers_within(settings, connected_by)
        return await within(max(deadline - loop.time(), 1.0), work())

    try:
        return aio.run(go())
    except NatsUnreachableError as exc:
        output.fail(
            UNAVAILABLE,
            "unavailable",
            unreachable_message(settings.nats_url(), exc, connect_s),
            hint="JETSOURCE_NATS__URL, JETSOURCE_ADMIN_CONNECT_TIMEOUT_S",
        )
    except NoAnswerError as exc:
        output.fail(
            UNAVAILABLE, "unavailable", no_answer_message(where, exc), hint="JETSOURCE_NATS__URL"
        )
    except TimeoutError:
        output.fail(
            UNAVAILABLE, "timeout", f"not done within --timeout {timeout:g} s", field="--timeout"
        )
    except KeyboardInterrupt:
        said = interrupted() if interrupted is not None else "interrupted"
        output.fail(INTERRUPTED, "cancelled", said)  # the code every group uses for Ctrl-C
    except OptionError as exc:
        output.fail(REFUSED, "refused", str(exc), field=exc.field)
    except AccessDeniedError as exc:
        output.fail(REFUSED, "access denied", str(exc))
    except EventStoreUnavailableError as exc:  # JetStream off, a write it refused
        output.fail(UNAVAILABLE, "unavailable", str(exc), hint="JETSOURCE_NATS__URL")
    except _refusals(OSError, ValueError) as exc:
        if refusal := output.refusal(exc):
            output.fail(UNAVAILABLE, "unavailable", refusal, hint="JETSOURCE_NATS__URL")
        output.fail(REFUSED, "refused", str(exc))


def _folder(folder: Path, create: bool) -> None:
    """A backup folder that can be used: a usage error (exit 2) naming it otherwise
    (not a folder, missing, or one this user cannot write, whether it exists or not)."""
    import tempfile

    from jetsource.cli.stream_admin import MANIFEST

    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(20, "not a folder (a file of that name is there)")
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder, prefix=".jetsource-probe-"):
                pass  # a folder that cannot be written is said now, not midway
        if not folder.is_dir():
            raise NotADirectoryError(20, "not a folder")
        if not create and not (folder / MANIFEST).is_file():
            raise FileNotFoundError(2, f"no {MANIFEST}: not a backup folder")
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, PermissionError | IsADirectoryError) or exc.errno in (13, 30):
            why = f"cannot write there ({why})"
        output.fail(USAGE, "usage", f"{folder}: {why}", field="FOLDER")


def _manifest_mark(folder: Path) -> tuple[int, int] | None:
    from jetsource.cli.stream_admin import MANIFEST

    try:
        st = (folder / MANIFEST).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


@app.command()
def backup(
    folder: Path = typer.Argument(..., help="Folder to write (created if missing)"),
    streams: list[str] = typer.Option(
        [], "--stream", help="Back up only this stream (repeatable); default: all of them"
    ),
    timeout: float = typer.Option(
        3600.0, "--timeout", min=0.1, help="Give up after this many seconds"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON"),
) -> None:
    """Back up every stream jetsource owns to FOLDER.

    Every registered domain's event stream, the snapshot and dead-letter streams, the
    compaction horizons, the omni raw payload archive, and the KV buckets of the
    personal-data keys (without them personal fields cannot be read), the process
    ledger's claims and the omni identity handles; of the read-model control bucket the
    operators' decisions (per model: the active version, the discarded dead letters) in
    read-models.json. Streams that were never created are left out. One JSON Lines file
    per stream (its config and state, then every message oldest first: sequence,
    subject, stored time, headers, data in base64) and manifest.json. Reads only; safe
    while the services run (the backup ends where each stream ended when it was read).
    Progress on stderr (a bar on a terminal; JSON lines with --json).
    """
    from jetsource.cli.projector import _progress
    from jetsource.cli.stream_admin import (
        BackupError,
        BackupSettings,
        OptionError,
        backup_check,
        backup_streams,
    )
    from jetsource.projection.bootstrap import DomainsError

    json_out = _json(as_json)
    settings = BackupSettings.load()
    _folder(folder, create=True)
    before = _manifest_mark(folder)
    # --stream and the folder's lock before NATS is tried (the settings first, as _run
    # checks them): with NATS away they were "not reachable" after the whole wait.
    try:
        staged = backup_check(settings, folder, streams)
    except DomainsError as exc:
        output.fail(USAGE, "usage", str(exc), field=exc.field)
    except OptionError as exc:  # said as when it was found after connecting: exit 1
        output.fail(REFUSED, "refused", str(exc), field=exc.field)
    except BackupError as exc:
        output.fail(REFUSED, "refused", str(exc))

    def interrupted() -> str:
        if _manifest_mark(folder) != before:  # Ctrl-C as the files were moved into place
            return f"interrupted after the backup was complete: {folder} holds the new one"
        held = "the backup there before is unchanged" if before else "no backup was written"
        return f"backup stopped before it was complete: nothing in {folder} changed ({held})"

    try:
        with _progress(f"backup to {folder}") as update:
            done: list[StreamBackup] = _run(
                settings,
                timeout,
                lambda: backup_streams(
                    settings, folder, only=streams, progress=update, staged=staged
                ),
                interrupted,
                domains=True,
            )
    finally:
        staged.unlock()  # the folder (let go by the backup itself once it ran)
    if json_out:  # the checksums are the manifest's (this document's shape is kept)
        output.emit_json([{k: v for k, v in asdict(d).items() if k != "sha256"} for d in done])
        return
    output.table(
        f"backup in {folder}",
        ("role", "stream", "messages", "first seq", "last seq", "file"),
        ((d.role, d.stream, d.messages, d.first_seq, d.last_seq, d.file) for d in done),
    )


@app.command()
def restore(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="A backup folder"),
    rename: list[str] = typer.Option(
        [], "--rename", help="OLD=NEW: restore stream OLD as NEW (repeatable)"
    ),
    subject_prefix: list[str] = typer.Option(
        [],
        "--subject-prefix",
        help="OLD=NEW: subjects under OLD go under NEW (repeatable), e.g. "
        "context.events=restored.events (a stream beside the old one needs its own subjects)",
    ),
    streams: list[str] = typer.Option(
        [], "--stream", help="Restore only this stream of the backup (repeatable)"
    ),
    timeout: float = typer.Option(
        3600.0, "--timeout", min=0.1, help="Give up after this many seconds"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON"),
) -> None:
    """Restore a backup into new (or empty) streams, every message in its order.

    Streams keep their names unless --rename says otherwise; a stream that exists with
    messages is refused before anything is written. A KV bucket (KV_<bucket>) is restored
    as one: renamed only to KV_<new>, its subjects move to $KV.<new>.> with it; a
    horizons bucket follows its event stream's --rename. Every file is read through
    first: a truncated or corrupt one is refused (exit 1) naming the file and the line,
    nothing restored. Sequences are the backed-up ones, gaps included (see
    same_sequences: not so for a KV bucket, or a target that existed denying purges);
    stored times are the time of the restore. The read models' decisions go into the
    control bucket (an empty or new one): each model's active version, live, and its
    discarded dead letters. Then rebuild the read models from the restored streams.
    """
    from jetsource.cli.projector import _progress
    from jetsource.cli.stream_admin import BackupError, OptionError, restore_plan, restore_streams
    from jetsource.projection.settings import ProjectorSettings

    json_out = _json(as_json)
    settings = ProjectorSettings.load()
    names = _pairs(rename, "--rename")
    prefixes = _pairs(subject_prefix, "--subject-prefix")
    _folder(folder, create=False)
    # What the folder alone says (the manifest, --stream, --rename, the files) before
    # NATS is tried: with NATS away a bad manifest was "not reachable" after the wait.
    try:
        plan = restore_plan(folder, names, streams)
    except OptionError as exc:  # said as when it was found after connecting: exit 1
        output.fail(REFUSED, "refused", str(exc), field=exc.field)
    except BackupError as exc:
        output.fail(REFUSED, "refused", str(exc))

    def interrupted() -> str:
        return (
            f"restore from {folder} stopped midway: run the same restore again to go on "
            "from where it stopped"
        )

    try:
        with _progress(f"restore from {folder}") as update:
            done: list[StreamRestore] = _run(
                settings,
                timeout,
                lambda: restore_streams(settings, folder, names, prefixes, streams, update, plan),
                interrupted,
            )
    finally:
        plan.release()  # the folder (let go by the restore itself once it ran)
    if json_out:
        output.emit_json([asdict(d) for d in done])
        return
    output.table(
        f"restored from {folder}",
        ("role", "from", "stream", "messages", "same sequences"),
        (
            (d.role, d.source, d.stream, d.messages, "yes" if d.same_sequences else "no")
            for d in done
        ),
    )


def __getattr__(name: str) -> Any:
    # What this module held before the work moved to stream_admin (restore_streams...).
    if name.startswith("__"):
        raise AttributeError(name)
    from jetsource.cli import stream_admin

    return getattr(stream_admin, name)
