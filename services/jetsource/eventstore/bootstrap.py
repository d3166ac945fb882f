"""Composition root for the event store: settings in, a connected store out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from jetsource.core.aio import wait_for
from jetsource.core.codec import EventRegistry
from jetsource.core.errors import AccessDeniedError, EventStoreUnavailableError
from jetsource.core.natsping import within
from jetsource.core.settings import JetsourceSettings, redact_url
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore

log = logging.getLogger("jetsource.nats")


def nats_options(settings: JetsourceSettings) -> dict[str, Any]:
    n = settings.nats
    options: dict[str, Any] = {
        # A comma-separated URL lists a cluster's servers: the client fails over among them.
        "servers": [u.strip() for u in settings.nats_url().split(",") if u.strip()],
        "connect_timeout": n.connect_timeout_s,
        "max_reconnect_attempts": -1,
        "name": n.name or "jetsource",
        "ping_interval": n.ping_interval_s,
        "max_outstanding_pings": n.max_outstanding_pings,
    }
    if n.user:
        options["user"] = n.user
        options["password"] = n.password.get_secret_value() if n.password else ""
    if n.token:
        options["token"] = n.token.get_secret_value()
    if n.creds_file:
        options["user_credentials"] = str(n.creds_file)
    if n.nkey_seed_file:
        options["nkeys_seed"] = str(n.nkey_seed_file)
    if n.tls.active:
        options["tls"] = _tls_context(n.tls)
    return options


TLS_FILES = (
    "JETSOURCE_NATS__TLS__CA_FILE, JETSOURCE_NATS__TLS__CERT_FILE and JETSOURCE_NATS__TLS__KEY_FILE"
)


def _tls_context(tls: Any) -> ssl.SSLContext:
    """The client's TLS context. A file that does not load (no PEM, a key that is not
    the certificate's) is this client's certificate trouble, said as NATS's own refusal
    of one is: the CLI said "unavailable" (exit 3: retry) naming no setting. (A service
    names the variable before it gets here: ``tls_problems``.)"""
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file or tls.cert_file))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise AccessDeniedError(
            f"the TLS files for NATS do not load: {exc}; check {TLS_FILES}"
        ) from exc
    context.check_hostname = tls.verify_hostname
    return context


# What NATS answers when it will never accept this client as configured.
_REFUSALS = ("authorization violation", "authentication", "certificate", "tls")


def survive_a_dead_socket(nc: NATS) -> None:
    """A write to a socket that died before the client noticed keeps its commands for
    the reconnect, as a write while reconnecting does, and raises nothing.

    nats-py's flusher task stops on the first write that meets the dead socket (under
    uvloop: RuntimeError 'unable to perform operation on <TCPTransport closed=True
    ...>; the handler is closed') while the client still says connected until its
    reader sees the end of the stream; meanwhile every publish and request flushes
    inline and raised that RuntimeError, which no caller takes for NATS away: a
    webhook met with NATS killed was answered 500 'internal error while resolving
    identities' (not 503, try again), and a model's read was an event's refusal.
    The commands stay pending and go out once the client has reconnected (a request
    waits for its reply as while reconnecting); the client starts that reconnect at
    once, as its reader would on seeing the end of the stream, so it no longer says
    connected (a flush returned as if everything had reached the server). When the
    write went out and the drain after it failed, the commands it took are put back
    in front of any written since: sent again after the reconnect (at least once, as
    nats-py's own buffering while reconnecting), not lost.

    The inline writes (flusher stopped) go one at a time: two that both failed in
    their drain put their commands back each in front of the other's (publish 1 then
    2 was delivered 2 then 1 after the reconnect). The second waits for the first;
    by then the first's failure has started the reconnect, which set the client
    reconnecting (nats-py's ``_process_op_err`` hands the rest to a task of its own
    and ends), so nats-py's own flush, seeing the client not connected, writes nothing
    and the second's commands stay pending behind the first's.

    A client not connected (closing: ``nc.close()`` kicks the flusher after setting
    CLOSED; reconnecting) goes straight to nats-py's flush, which then writes nothing:
    no lock, which a holder stuck in its drain would keep (the close hung behind it).
    A flusher a shutdown cancelled (``aio.stop_others``) starts no reconnect."""
    flush = nc._flush_pending
    inline = asyncio.Lock()

    async def flush_pending(force_flush: bool = False) -> Any:
        if not nc.is_connected:
            return await flush(force_flush)
        flusher = nc._flusher_task
        if flusher is not None and not flusher.done():
            return await guarded(force_flush)  # queued for the flusher: in order
        async with inline:
            if jsapi.reconnect_started(nc):
                # The reconnect is started (the client says connected until it runs):
                # the commands stay pending, behind those put back, for the reconnect.
                return _done()
            return await guarded(force_flush)

    async def guarded(force_flush: bool) -> Any:
        # nats-py's inline write replaces _pending with a new list: ``taken`` keeps them.
        taken, size = nc._pending, nc._pending_data_size
        try:
            return await flush(force_flush)
        except (RuntimeError, OSError) as exc:
            log.debug("nats: a write met a dead socket (%s); kept for the reconnect", exc)
            if nc._pending is not taken:  # cleared after the write: put them back first
                nc._pending = taken + nc._pending
                nc._pending_data_size = size + nc._pending_data_size
            # Once: the reconnect the reader would start on the end of the stream; none
            # with the flusher cancelled (a shutdown).
            if not jsapi.flusher_cancelled(nc):
                jsapi.start_reconnect(nc, exc)
            return _done()

    nc.__dict__["_flush_pending"] = flush_pending


def _done() -> asyncio.Future[None]:
    """What nats-py's _flush_pending returns: a future, here already done."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


async def connect(settings: JetsourceSettings) -> NATS:
    """A connected client. Refused credentials or certificates raise AccessDeniedError at
    once (nats-py would otherwise retry them forever); an absent server is waited for."""
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[Exception] = loop.create_future()
    where = redact_url(settings.nats_url())

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, jsapi.ReplyHandOverError):
            # Nothing to retry: one reply lost, the connection reads on. First: its
            # message names a random inbox subject, which may hold "tls" (a refusal).
            log.error("nats at %s: %s", where, exc)
            return
        text = str(exc).lower()
        # A permissions violation before the refusal words: it names a subject, which
        # may hold "tls" (a random inbox), and ended a connect as AccessDeniedError.
        if "permissions violation" in text and not isinstance(exc, ssl.SSLError):
            jsapi.note_denial(str(exc))
            # A subject this client's NATS user may not use: nothing retries it, and the
            # request behind it waits out its timeout (then reads as a server that does
            # not answer). Said at warning level with "retrying" before.
            log.error(
                "NATS at %s refused this client: %s; the NATS server's permissions for "
                "this client's user (JETSOURCE_NATS__USER, __CREDS_FILE or "
                "__NKEY_SEED_FILE) must allow it (subjects as the client library "
                "reports them, in lower case)",
                where,
                exc,
            )
        elif isinstance(exc, ssl.SSLError) or any(k in text for k in _REFUSALS):
            if not refused.done():
                refused.set_result(exc)
            log.error("nats refused this client: %s", exc)
        else:
            # Named, and said to be retried: "nats: [Errno 111] Connection refused"
            # said neither which server nor that the service waits for it.
            reason = str(exc) or type(exc).__name__
            log.warning("nats: %s at %s; retrying", reason, where)

    nc = NATS()
    survive_a_dead_socket(nc)
    connecting = asyncio.ensure_future(nc.connect(**nats_options(settings), error_cb=on_error))
    waiting: set[asyncio.Future[Any]] = {connecting, refused}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the caller gave up (a timeout): stop connecting as well
        await _abandon(nc, connecting)
        raise
    if not refused.done():
        connecting.result()  # connected, or a failure other than a refusal, raised as is
        return nc
    await _abandon(nc, connecting)
    reason = refused.result()
    raise AccessDeniedError(
        f"NATS at {redact_url(settings.nats_url())} refused this client: {reason}; "
        f"check {refusal_settings(reason)}"
    ) from reason


def refusal_settings(reason: BaseException) -> str:
    """The settings that decide what NATS refused: the TLS files for a certificate or
    handshake refusal, else the credentials (an operator saw only 'Authorization
    Violation', without what to change)."""
    text = str(reason).lower()
    if isinstance(reason, ssl.SSLError) or "certificate" in text or "tls" in text:
        return (
            "JETSOURCE_NATS__TLS__CA_FILE, JETSOURCE_NATS__TLS__CERT_FILE and "
            "JETSOURCE_NATS__TLS__KEY_FILE"
        )
    return (
        "JETSOURCE_NATS__USER and JETSOURCE_NATS__PASSWORD, JETSOURCE_NATS__TOKEN, "
        "JETSOURCE_NATS__CREDS_FILE or JETSOURCE_NATS__NKEY_SEED_FILE"
    )


async def _abandon(nc: NATS, connecting: asyncio.Future[Any]) -> None:
    """Stop a connect in progress and its retry loop (closing the client ends it even
    where nats-py swallows the cancellation)."""
    connecting.cancel()
    with contextlib.suppress(Exception):
        await nc.close()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await wait_for(connecting, 2)


class JetStreamOffError(EventStoreUnavailableError):
    """NATS answers, but its JetStream API does not (the server runs without JetStream,
    or it is disabled for the account): nothing can be read or stored until it is on."""


# JetStream API err_codes saying JetStream is off (nats-server's errors.json).
_JETSTREAM_OFF = {10076: "JetStream is disabled", 10039: "JetStream is not enabled for the account"}


async def require_jetstream(nc: NATS, settings: JetsourceSettings, timeout_s: float = 2.0) -> None:
    """Raise :class:`JetStreamOffError` when the server ``nc`` is connected to serves
    no JetStream API: a command then says so, naming the server and its setting,
    instead of reading "no responders" as a missing stream or a bug. Asked once
    (``$JS.API.INFO``); no answer in time, or one refused by permissions, decides
    nothing (the command goes on and reports what it meets)."""
    where = redact_url(settings.nats_url())
    remedy = (
        "start nats-server with JetStream (-js, or a jetstream block in its config), "
        "or point JETSOURCE_NATS__URL at one that has it"
    )
    try:
        # Bounded for sure (natsping.within): nats-py's request waited for room in a
        # full pending buffer with no end, a hung server's.
        msg = await within(nc.request("$JS.API.INFO", b"", timeout=timeout_s), timeout_s)
    except nats.errors.NoRespondersError:
        raise JetStreamOffError(
            f"JetStream is not enabled on NATS at {where}: the server answers, but "
            f"nothing serves the JetStream API; {remedy}"
        ) from None
    except Exception:
        return
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = json.loads(msg.data).get("error") or {}
        said = _JETSTREAM_OFF.get(int(error.get("err_code") or 0))
        if said:
            raise JetStreamOffError(
                f"{said} on NATS at {where} ({error.get('description')}); {remedy}"
            )


async def release(nc: NATS) -> None:
    """Drain the connection; if it cannot be drained (the server is gone and it is
    reconnecting), close it, so its reconnect loop never outlives its owner."""
    try:
        await nc.drain()
    except Exception:
        await nc.close()


async def open_event_store(
    settings: JetsourceSettings, registry: EventRegistry, provision: bool = False
) -> tuple[NATS, JetStreamEventStore]:
    nc = await connect(settings)
    store = JetStreamEventStore(nc, registry, settings.eventstore)
    if provision:
        await store.ensure_streams()
    else:
        await store.start()
    return nc, store


async def open_snapshot_store(
    nc: NATS, settings: JetsourceSettings, provision: bool = False
) -> JetStreamSnapshotStore:
    snapshots = JetStreamSnapshotStore(
        nc, settings.snapshots, settings.eventstore.request_timeout_s
    )
    if provision:
        await snapshots.ensure_stream()
    else:
        await snapshots.start()
    return snapshots
