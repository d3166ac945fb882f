"""`jetsource omni ...`: the messaging ingest's admin commands, straight on NATS.

- ``raw show ID``: one archived request (headers, body, verdict, reason);
- ``identity create``, ``identity link``, ``identity merge``, ``identity handles``:
  identities across providers (event-sourced; every ingress's cache follows).

``--json`` prints one JSON document. Exit codes: 0 ok, 1 refused (bad input, not
found, a stream or the handles bucket missing), 3 NATS unavailable.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from jetsource.cli import output
from jetsource.core import aio
from jetsource.core.errors import (
    AccessDeniedError,
    EventStoreUnavailableError,
    JetsourceError,
    StreamMissingError,
)

# The omni domain (and with it every domain) and NATS are imported by the commands.
if TYPE_CHECKING:
    from jetsource.domains.omni.identity import IdentityService
    from jetsource.ingest.settings import IngestSettings

T = TypeVar("T")
app = typer.Typer(
    help="Messaging ingest (omni): raw payloads and identities.", no_args_is_help=True
)
raw_app = typer.Typer(help="The raw payload archive.", no_args_is_help=True)
identity_app = typer.Typer(help="Identities across providers.", no_args_is_help=True)
app.add_typer(raw_app, name="raw")
app.add_typer(identity_app, name="identity")

EXIT_REFUSED, EXIT_UNAVAILABLE = 1, 3


def _fail(
    as_json: bool,
    code: int,
    status: str,
    message: str,
    field: str | None = None,
    hint: str | None = None,
) -> NoReturn:
    """As every group: ``STATUS: message (field: x)`` on stderr, or with ``--json`` /
    ``-o json`` one JSON error document (``field`` in it), exit ``code``."""
    if as_json:
        output.set_mode(output.Mode.json)
    if hint:
        output.fail(code, status, message, field=field, hint=hint)
    output.fail(code, status, message, field=field)


def _run(work: Callable[[IngestSettings, Any], Awaitable[T]], as_json: bool = False) -> T:
    from jetsource.cli.streams import (
        NatsUnreachableError,
        settings_checked,
        unreachable_message,
        wait_for_nats,
    )
    from jetsource.core.settings import redact_url
    from jetsource.domains.omni.identity import IdentityNotFoundError
    from jetsource.domains.omni.raw import RawRecordCorruptError
    from jetsource.eventstore.bootstrap import connect, release, require_jetstream
    from jetsource.ingest.settings import IngestSettings

    settings = IngestSettings.load()
    try:  # the settings first (the TLS files): said as such whatever NATS is
        settings_checked(settings)
    except AccessDeniedError as exc:
        _fail(as_json, EXIT_REFUSED, "UNAUTHENTICATED", str(exc))

    async def go() -> T:
        import asyncio

        loop = asyncio.get_running_loop()
        wait_s = settings.nats.connect_timeout_s + 1
        connected_by = loop.time() + wait_s  # the TCP try and the handshake together
        try:  # a closed port (every server refuses) is said at once
            await wait_for_nats(settings.nats_url(), connected_by, refused_ends=True)
        except NatsUnreachableError as exc:
            if exc.refused:
                raise EventStoreUnavailableError(
                    unreachable_message(settings.nats_url(), exc, wait_s)
                ) from None
            raise TimeoutError() from None
        nc = await aio.wait_for(connect(settings), max(connected_by - loop.time(), 0.1))
        try:
            await require_jetstream(nc, settings)
            return await work(settings, nc)
        finally:
            await release(nc)

    try:
        return aio.run(go())
    except StreamMissingError as exc:
        if as_json:
            output.set_mode(output.Mode.json)
        name = output.stream_named(str(exc)) or settings.omni.raw_stream
        # The raw archive is the ingest service's own; `streams ensure` makes the rest.
        hint = output.INGEST_HINT if name == settings.omni.raw_stream else output.ENSURE_HINT
        output.missing("FAILED_PRECONDITION", name, hint)
    except _BucketMissing as exc:
        if as_json:
            output.set_mode(output.Mode.json)
        output.missing("FAILED_PRECONDITION", exc.bucket, exc.hint, what="bucket")
    except (EventStoreUnavailableError, TimeoutError, OSError) as exc:
        if not (reason := str(exc)):
            from jetsource.devstack.probes import why_unreachable

            reason = f"NATS at {redact_url(settings.nats_url())} did not answer"
            reason += why_unreachable(settings.nats_url())
        _fail(as_json, EXIT_UNAVAILABLE, "UNAVAILABLE", reason, hint="JETSOURCE_NATS__URL")
    except AccessDeniedError as exc:  # NATS refused the credentials (was INVALID_ARGUMENT)
        _fail(as_json, EXIT_REFUSED, "UNAUTHENTICATED", str(exc))
    except (JetsourceError, ValueError) as exc:
        field = getattr(exc, "field", None)
        status = "NOT_FOUND" if isinstance(exc, IdentityNotFoundError) else "INVALID_ARGUMENT"
        if isinstance(exc, RawRecordCorruptError):
            status = "DATA_LOSS"  # a record published raw: the request was right
        _fail(as_json, EXIT_REFUSED, status, str(exc), field)


class _BucketMissing(Exception):
    def __init__(self, bucket: str, hint: str) -> None:
        super().__init__(bucket)
        self.bucket, self.hint = bucket, hint


HANDLES_HINT = (
    "no handle was ever recorded here: the ingest service (jetsource-ingest) creates it "
    "when it starts, as `jetsource omni identity link` does"
)


async def _require_handles(settings: IngestSettings, nc: Any) -> None:
    """The handles bucket must exist before a read of it: the identity service would
    create it (a read that changes something) and answer "no identity has the handle"
    for every handle, as if it were unknown."""
    from nats.js.errors import NotFoundError

    bucket = settings.omni.identity_bucket
    js = nc.jetstream(timeout=settings.eventstore.request_timeout_s)
    try:
        await js.stream_info(f"KV_{bucket}")
    except NotFoundError:
        raise _BucketMissing(bucket, HANDLES_HINT) from None


def _identities(settings: IngestSettings, nc: Any) -> IdentityService:
    from jetsource.domains.omni.descriptor import omni_domain
    from jetsource.domains.omni.identity import IdentityService
    from jetsource.eventstore.jetstream import JetStreamEventStore

    domain = omni_domain(settings.omni)
    store = JetStreamEventStore(nc, domain.registry, domain.eventstore(settings))
    return IdentityService(nc, store, settings.omni)


def _emit(as_json: bool, document: dict[str, Any], text: str) -> None:
    if as_json or output.mode() == output.Mode.json:
        # The one JSON emitter: a U+202E, DEL or C1 in a body, header or handle (anyone
        # who reaches the webhooks chose it) is written as its \uXXXX escape.
        output.emit_json(document)
    else:
        # Bodies, headers and handles came from anyone who can reach the webhooks (a
        # refused request is archived too): an ESC or an OSC in one reached the
        # operator's terminal raw (colours, its title, ...). Shown as escapes; --json
        # and --body give them as they are.
        typer.echo(output.printable(text))


@raw_app.command("show")
def raw_show(
    raw_id: str = typer.Argument(..., help="the raw payload id (an event's raw_ref)"),
    as_json: bool = typer.Option(False, "--json", help="print it as JSON"),
    body_only: bool = typer.Option(
        False, "--body", help="print only the body, as archived (credentials redacted)"
    ),
) -> None:
    """Show one archived request: when, where, headers, verdict, reason and body."""

    async def work(settings: IngestSettings, nc: Any) -> Any:
        from jetsource.domains.omni.raw import RawArchive

        archive = RawArchive(nc, settings.omni, settings.eventstore.request_timeout_s)
        try:
            return await archive.get(raw_id)
        finally:
            await archive.close()

    record = _run(work, as_json)
    if record is None:
        _fail(as_json, EXIT_REFUSED, "NOT_FOUND", f"no raw payload {raw_id!r}", "raw_id")
    if body_only:
        sys.stdout.buffer.write(record.body)
        return
    from google.protobuf.json_format import MessageToDict

    document = MessageToDict(record, preserving_proto_field_name=True)
    with contextlib.suppress(UnicodeDecodeError):
        document["body_text"] = record.body.decode()
    lines = [
        f"raw payload {record.id}",
        f"  received   {record.received_at.ToJsonString()} on {record.method} {record.path}",
        f"  instance   {record.provider}/{record.instance}",
        f"  verdict    {document.get('verdict', 'VERDICT_UNSPECIFIED')} "
        f"(HTTP {record.http_status})" + (f": {record.reason}" if record.reason else ""),
        f"  events     {', '.join(record.event_ids) or '-'}",
        f"  body       {record.body_size} bytes"
        + (" (truncated)" if record.body_truncated else ""),
        *([f"  redacted   {', '.join(record.body_redacted)}"] if record.body_redacted else []),
        *([f"  sha256     {record.body_sha256.hex()} (as received)"] if record.body_sha256 else []),
        "  headers",
        *(f"    {k}: {v}" for k, v in sorted(record.headers.items())),
        "",
        document.get("body_text", "(binary body: use --body)"),
    ]
    _emit(as_json, document, "\n".join(lines))


@identity_app.command("create")
def identity_create(
    name: str = typer.Option("", "--name", help="display name"),
    actor: str = typer.Option("", "--actor", help="who (default: $USER)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A new identity with no handle yet (link handles to it)."""

    async def work(settings: IngestSettings, nc: Any) -> str:
        return await _identities(settings, nc).create(name, actor or output.user_name())

    identity = _run(work, as_json)
    _emit(as_json, {"identity_id": identity}, identity)


@identity_app.command("link")
def identity_link(
    identity_id: str = typer.Argument(...),
    provider: str = typer.Argument(..., help="whatsapp, discord, ..."),
    external_id: str = typer.Argument(..., help="the handle: a phone number, a Discord user id"),
    actor: str = typer.Option("", "--actor", help="who (default: $USER)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Make a handle resolve to IDENTITY_ID (moving it from the identity it had)."""

    async def work(settings: IngestSettings, nc: Any) -> str:
        service = _identities(settings, nc)
        return await service.link(identity_id, provider, external_id, actor or output.user_name())

    previous = _run(work, as_json)
    _emit(
        as_json,
        {"identity_id": identity_id, "handle": f"{provider}:{external_id}", "previous": previous},
        f"{provider}:{external_id} -> {identity_id}"
        + (f" (was {previous})" if previous and previous != identity_id else ""),
    )


@identity_app.command("merge")
def identity_merge(
    survivor_id: str = typer.Argument(..., help="the identity that stays"),
    merged_id: str = typer.Argument(..., help="the identity merged into it"),
    reason: str = typer.Option("", "--reason"),
    actor: str = typer.Option("", "--actor", help="who (default: $USER)"),
    yes: bool = typer.Option(False, "--yes", help="confirm: a merge is not undone"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Merge MERGED_ID into SURVIVOR_ID: its handles and timeline follow."""
    if not yes:
        _fail(as_json, 2, "INVALID_ARGUMENT", "a merge is not undone: add --yes to confirm")

    async def work(settings: IngestSettings, nc: Any) -> list[str]:
        service = _identities(settings, nc)
        return await service.merge(survivor_id, merged_id, actor or output.user_name(), reason)

    moved = _run(work, as_json)
    _emit(
        as_json,
        {"survivor_id": survivor_id, "merged_id": merged_id, "handles": moved},
        f"{merged_id} merged into {survivor_id}; handles moved: {', '.join(moved) or '-'}",
    )


@identity_app.command("handles")
def identity_handles(
    identity_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The handles that resolve to IDENTITY_ID now."""

    async def work(settings: IngestSettings, nc: Any) -> list[tuple[str, str]]:
        from jetsource.domains.omni.identity import check_identity_id

        service = _identities(settings, nc)
        check_identity_id(identity_id, "identity_id")  # bad input first, as the service says it
        await _require_handles(settings, nc)
        return await service.handles_of(identity_id)

    handles = _run(work, as_json)
    names = [f"{p}:{x}" for p, x in handles]
    _emit(as_json, {"identity_id": identity_id, "handles": names}, "\n".join(names) or "-")


@identity_app.command("resolve")
def identity_resolve(
    provider: str = typer.Argument(...),
    external_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Which identity a handle resolves to (nothing is created)."""

    async def work(settings: IngestSettings, nc: Any) -> str | None:
        from jetsource.domains.omni.identity import check_handle

        service = _identities(settings, nc)
        check_handle(provider, external_id)  # bad input first: a usage answer, as before
        await _require_handles(settings, nc)
        return await service.lookup(provider, external_id)

    found = _run(work, as_json)
    if found is None:
        _fail(
            as_json,
            EXIT_REFUSED,
            "NOT_FOUND",
            f"no identity has the handle {provider}:{external_id}",
            "external_id",
        )
    _emit(as_json, {"handle": f"{provider}:{external_id}", "identity_id": found}, found)
