"""`jetsource projector status | replay | rebuild | reset | cutover | drop | wait | dlq ...`.

Admin commands for the read models. They talk to NATS, Valkey and the graph store
directly (settings as for the projector service), show progress on long work, print
a summary and exit non-zero on failure.

Scripting: ``--json`` on every command (or the global ``--output json``) prints one
JSON document on stdout; errors go to stderr (as ``{"error": {...}}`` in JSON mode).
Exit codes: 0 ok, 1 refused (the command cannot be done as asked: a version that is
not built, already active, being dropped; failed dead letters or stories; a stream
that does not exist, named with `jetsource streams ensure`), 2 usage
(an unknown model, an empty or inverted slice, a missing ``--yes`` or a confirmation
prompt answered no or not at all), 3 unavailable
(NATS, Valkey or the graph store did not answer; ``wait`` timed out).

Long work (rebuild, reset, replay, dlq retry) draws a progress bar on a terminal; when
stdout is not a terminal (or with JSON output) it writes a progress line on stderr
every ``JETSOURCE_PROGRESS_EVERY_S`` seconds (5): done/total, percent, rate, ETA.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from jetsource.cli import output
from jetsource.cli.output import REFUSED, UNAVAILABLE, USAGE, Mode
from jetsource.core import aio

# The projection runtime (NATS, Valkey, the graph driver) is imported by the commands
# that use it: `projector --help`, and the groups that borrow the helpers below, do
# not pay for it.
if TYPE_CHECKING:
    from jetsource.projection import admin
    from jetsource.projection.bootstrap import Projection
    from jetsource.projection.settings import ProjectorSettings

T = TypeVar("T")
app = typer.Typer(
    help="Read models: status, replay, rebuild, reset, cut over, drop, wait, dead letters.\n\n"
    "Every command takes --json. Exit codes: 0 ok, 1 refused, 2 usage (or a confirmation "
    "not given), 3 unavailable, 130 stopped by Ctrl-C or SIGTERM.",
    no_args_is_help=True,
)
dlq = typer.Typer(help="Dead letters: list, show, retry, discard.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")

# Model versions and sequences: a larger number is a usage error, not a version
# written into the control entry or a request the server cannot parse.
MAX_VERSION, U64 = 2**31 - 1, 2**64 - 1


def env_seconds(name: str, default: float) -> float:
    """A duration setting read when a command needs it (not at import: a bad value
    would break every command), as a usage error naming the variable."""
    text = os.environ.get(name, "")
    try:
        value = float(text) if text.strip() else default
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        output.fail(USAGE, "usage", f"{name}={text!r}: give a number of seconds above 0")
    return value


def connect_timeout_s() -> float:
    """Connecting waits this long for NATS before the command gives up (exit 3)."""
    return env_seconds("JETSOURCE_ADMIN_CONNECT_TIMEOUT_S", 10.0)


MODEL_ARG = typer.Argument(None, metavar="[MODEL]", help="The read model (or use --model)")
MODEL = typer.Option(None, "--model", "-m", help="The read model, e.g. context | timeline | graph")
MODEL_OPT = typer.Option(None, "--model", "-m", help="One read model (default: all)")
JSON = typer.Option(False, "--json", help="One JSON document on stdout (as --output json)")


# -- plumbing ---------------------------------------------------------------------------


def _json(flag: bool) -> bool:
    """``--json`` here or ``--output json`` globally; either makes errors JSON too."""
    if flag:
        output.set_mode(Mode.json)
    return output.mode() == Mode.json


def _settings() -> ProjectorSettings:
    from jetsource.projection.settings import ProjectorSettings

    return ProjectorSettings.load()


def _model(arg: str | None, opt: str | None, required: bool = True) -> str:
    """The model named by the argument or ``--model``, checked against the registered
    domains before anything connects (a misspelt name is a usage error)."""
    if arg and opt and arg != opt:
        output.fail(
            USAGE, "usage", f"two models named: {arg!r} and --model {opt!r}", field="--model"
        )
    name = arg or opt
    if not name:
        if required:
            output.fail(USAGE, "usage", "name the read model: MODEL or --model", field="--model")
        return ""
    from jetsource.projection.bootstrap import load_domains

    known = load_domains(_settings().projector.domains).models()
    if name not in known:
        output.fail(
            USAGE,
            "usage",
            f"unknown read model {name!r}; known: {', '.join(sorted(known))}",
            field="--model",
        )
    return name


def _fail_for(exc: BaseException, settings: ProjectorSettings) -> NoReturn:
    from jetsource.core.errors import (
        AccessDeniedError,
        EventStoreUnavailableError,
        JetsourceError,
        StreamMissingError,
    )
    from jetsource.core.settings import redact_url
    from jetsource.eventstore import jsapi
    from jetsource.projection import admin
    from jetsource.projection.bootstrap import DomainsError, UnknownModelError
    from jetsource.projection.contract import TransientError
    from jetsource.projection.control import ControlError

    if isinstance(exc, admin.WaitTimeout):
        output.fail(UNAVAILABLE, "timeout", str(exc))
    if isinstance(exc, admin.UsageError | UnknownModelError | DomainsError):
        output.fail(USAGE, "usage", str(exc), field=getattr(exc, "field", None))
    # A missing stream (a direct get from one: NoResponders): as in every group, exit 1.
    if isinstance(exc, StreamMissingError | jsapi.NoRespondersError):
        name = output.stream_named(str(exc))
        if name:
            output.missing("refused", name)
        output.fail(REFUSED, "refused", str(exc), hint=output.ENSURE_HINT)
    if refusal := output.refusal(exc):  # full, sealed, JetStream off: retry once freed
        output.fail(UNAVAILABLE, "unavailable", refusal, hint="JETSOURCE_NATS__URL")
    if isinstance(exc, jsapi.JsApiError) and exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
        output.fail(REFUSED, "refused", f"a stream does not exist ({exc})", hint=output.ENSURE_HINT)
    if isinstance(exc, admin.Busy):  # another run holds the version: try later
        output.fail(REFUSED, "busy", str(exc))
    if isinstance(exc, admin.AdminError | ControlError):
        output.fail(REFUSED, "refused", str(exc))
    if isinstance(exc, AccessDeniedError):
        output.fail(REFUSED, "access denied", str(exc))
    if isinstance(exc, TimeoutError | EventStoreUnavailableError | OSError | TransientError):
        output.fail(
            UNAVAILABLE,
            "unavailable",
            str(exc)
            or (
                f"NATS at {redact_url(settings.nats_url())} did not answer in time"
                if isinstance(exc, TimeoutError)
                else type(exc).__name__
            ),
            hint=f"NATS: {redact_url(settings.nats_url())} (JETSOURCE_NATS__URL), Valkey: "
            "JETSOURCE_VALKEY__URL, graph: JETSOURCE_GRAPH__URI",
        )
    if isinstance(exc, JetsourceError | ValueError | jsapi.JsApiError):
        output.fail(REFUSED, "refused", str(exc))
    raise exc


def _model_stream(name: str) -> Callable[[Projection], list[str]]:
    """The event stream of model ``name`` (for ``_run``'s ``need``)."""
    return lambda p: [p.store_for(name).settings.stream]


def _dlq_stream(p: Projection) -> list[str]:
    return [p.dead_letters.stream]


async def _absent(p: Projection, streams: list[str]) -> list[str]:
    """Those of ``streams`` that do not exist (each asked once)."""
    from nats.js.errors import NotFoundError

    js = p.nc.jetstream(timeout=p.store.settings.request_timeout_s)
    absent = []
    for stream in dict.fromkeys(streams):
        try:
            await js.stream_info(stream)
        except NotFoundError:
            absent.append(stream)
    return absent


async def _require(p: Projection, streams: list[str]) -> None:
    """Each stream exists, else ``StreamMissingError`` naming it: before a command
    reads (or writes) anything, so a missing one is said as such, not as "0 dead
    letters" or a bare JetStream 404."""
    from jetsource.core.errors import StreamMissingError

    for stream in await _absent(p, streams):
        raise StreamMissingError(f"stream {stream} does not exist")


async def _leaderless(p: Projection, streams: list[str]) -> dict[str, str]:
    """Those of ``streams`` without a leader they can work with, each with why (no
    leader, a leader that lost quorum, no JetStream meta leader, INFO not answered):
    asked at once, each within the store's request timeout."""
    from jetsource.eventstore import jsapi

    store = p.store
    await store.start()
    timeout = store.settings.request_timeout_s

    async def why(name: str) -> str | None:
        said = await jsapi.stream_leadership(store._replies, name, timeout)
        # Not answered because NATS refused it (this user may not publish to the
        # subject: no reply, only a permissions violation): it read as a stream
        # without a leader, exit 3 and "start the missing servers" on a healthy
        # cluster.
        if said and (denied := jsapi.denial_of(f"STREAM.INFO.{name}", timeout + 5, exact=True)):
            raise _denied(f"$JS.API.STREAM.INFO.{name}", denied)
        return said

    names = list(dict.fromkeys(streams))
    found = await asyncio.gather(*(why(name) for name in names))
    return {name: why for name, why in zip(names, found, strict=True) if why}


def _denied(subject: str, denied: str) -> Exception:
    """Access denied to a JetStream API ``subject`` (NATS said ``denied``), naming it and
    the settings of the user (exit 1, "access denied", as every admin group says it)."""
    from jetsource.core.errors import AccessDeniedError
    from jetsource.eventstore.bootstrap import refusal_settings

    return AccessDeniedError(
        f"NATS refused this client a request to {subject}: {denied}; the NATS server's "
        "permissions for this client's user must allow publishing to it (check "
        f"{refusal_settings(PermissionError('permissions violation'))})"
    )


def consumer_leadership(info: dict[str, Any], stream_replicas: int) -> str | None:
    """Why a durable consumer that answered its INFO has no leader it can work with
    (:func:`jsapi.quorum_lost`), or None. Its replicas are its stream's unless set; a
    replicated one answered by the meta leader for want of its own has no ``cluster``
    (a single server's never has one either: not replicated, None)."""
    from jetsource.eventstore import jsapi

    config = info.get("config") or {}
    replicas = int(config.get("num_replicas") or stream_replicas or 1)
    if replicas <= 1:
        return None
    if not (info.get("cluster") or {}).get("leader"):
        return "no leader"
    return jsapi.quorum_lost({**info, "config": {**config, "num_replicas": replicas}})


async def _leaderless_consumers(
    p: Projection, rows: list[dict[str, Any]], named: dict[str, str]
) -> dict[str, str]:
    """The durable consumers of the versions in ``rows`` without a leader they can work
    with, as ``consumer STREAM/DURABLE``: why. Those of the streams ``named`` already
    (leaderless) are not asked again. Only streams were: a consumer whose leader was on
    a server that went away (its stream's leader elsewhere, or left without quorum and
    not yet seen as such) went unnamed."""
    from jetsource.eventstore import jsapi

    store = p.store
    timeout = store.settings.request_timeout_s
    wanted: dict[tuple[str, str], None] = {}
    for r in rows:
        if not isinstance(r.get("version"), int) or r["stream"] in named:
            continue
        with suppress(Exception):  # a model without a spec of that version: not asked
            wanted[(r["stream"], p.spec(r["model"], r["version"]).durable)] = None
    if not wanted:
        return {}

    async def replicas(stream: str) -> int:
        try:
            info = await jsapi.api(store._replies, f"STREAM.INFO.{stream}", {}, timeout)
        except Exception:
            return 1  # said by the streams' own check
        return int((info.get("config") or {}).get("num_replicas") or 1)

    streams = list(dict.fromkeys(s for s, _ in wanted))
    sizes = dict(zip(streams, await asyncio.gather(*(replicas(s) for s in streams)), strict=True))

    async def why(stream: str, durable: str) -> str | None:
        try:
            info = await jsapi.consumer_info(store._replies, stream, durable, timeout)
        except jsapi.JsApiError as exc:
            if exc.err_code == jsapi.ERR_CLUSTER_UNAVAILABLE:
                return f"no JetStream meta leader ({exc})"
            return None  # the row says it
        except TimeoutError:
            subject = f"CONSUMER.INFO.{stream}.{durable}"
            if denied := jsapi.denial_of(subject, timeout + 5, exact=True):
                raise _denied(f"$JS.API.{subject}", denied) from None
            return f"CONSUMER.INFO not answered within {timeout:g} s"
        return None if info is None else consumer_leadership(info, sizes[stream])

    found = await asyncio.gather(*(why(s, d) for s, d in wanted))
    return {f"consumer {s}/{d}": said for (s, d), said in zip(wanted, found, strict=True) if said}


def _all_streams(p: Projection) -> list[str]:
    """Every stream the read models read: each domain's events, the snapshots, the
    dead letters."""
    events = [store.settings.stream for store in p.stores.values()]
    return [*events, p.snapshots.settings.stream, p.dead_letters.stream]


INTERRUPTED = 130


def _run(
    work: Callable[[Projection], Awaitable[T]],
    need: Callable[[Projection], list[str]] | None = None,
    stopped: str = "stopped (Ctrl-C)",
) -> T:
    """``work`` on an open projection; the streams ``need`` names must exist first.
    Ctrl-C ends it with ``stopped`` (code ``cancelled``, exit 130)."""
    from jetsource.cli.streams import (
        NatsUnreachableError,
        settings_checked,
        unreachable_message,
        wait_for_nats,
    )
    from jetsource.core.settings import redact_url
    from jetsource.eventstore.bootstrap import require_jetstream
    from jetsource.eventstore.jsapi import refused_instead
    from jetsource.projection.bootstrap import open_projection, projection_domains

    settings = _settings()
    connect_s = connect_timeout_s()
    try:
        # The settings first (the domains, the TLS files): a bad one is said as such
        # (exit 2 for the domains) whatever NATS is, not as "not reachable".
        domains = projection_domains(settings)
        settings_checked(settings)
    except Exception as exc:
        _fail_for(exc, settings)

    async def go() -> T:
        loop = asyncio.get_running_loop()
        # Every wait for NATS, the "does NATS answer" probe included, within connect_s:
        # the probe came after the whole of it (a silent server: 12 s of a documented 10).
        deadline = loop.time() + connect_s
        probe_s = min(NATS_PROBE_S, connect_s / 5)
        try:
            # A closed port (every server refuses) is said at once, not after connect_s.
            await wait_for_nats(settings.nats_url(), deadline, refused_ends=True)
        except NatsUnreachableError as exc:
            raise TimeoutError(unreachable_message(settings.nats_url(), exc, connect_s)) from None
        try:
            p = await aio.wait_for(
                open_projection(settings, provision=False, domains=domains),
                max(deadline - probe_s - loop.time(), 0.1),
            )
        except TimeoutError:
            # Its requests got no answer because NATS refused them: not an outage.
            if refused := refused_instead(redact_url(settings.nats_url()), connect_s + 5):
                raise refused from None
            where = redact_url(settings.nats_url())
            if await _nats_answers(settings, max(deadline - loop.time(), 0.1)):
                # It was "NATS did not answer" while NATS answered and its JetStream API
                # did not: a cluster that lost quorum (or is electing a leader).
                raise TimeoutError(
                    f"NATS at {where} answers, but its JetStream API did not within "
                    f"{connect_s:g} s: a NATS cluster electing a leader or that lost quorum "
                    "(more than half of its servers down or cut off) answers none for a "
                    "while; start the missing servers, or run it again in a few seconds"
                ) from None
            from jetsource.devstack.probes import why_unreachable

            raise TimeoutError(
                f"NATS at {where} did not answer within {connect_s:g} s"
                + why_unreachable(settings.nats_url())
            ) from None
        try:
            await require_jetstream(p.nc, settings)
            if need is not None:
                await _require(p, need(p))
            return await work(p)
        finally:
            await p.close()

    try:
        return aio.run(go())
    except KeyboardInterrupt:
        output.fail(INTERRUPTED, "cancelled", stopped)
    except Exception as exc:
        _fail_for(exc, settings)


# How long telling "NATS answers, JetStream does not" from "NATS does not answer" may
# take, once opening the projection timed out.
NATS_PROBE_S = 2


async def _nats_answers(settings: ProjectorSettings, within_s: float = NATS_PROBE_S) -> bool:
    """NATS takes a connection and answers a PING, both within ``within_s``.
    The PING goes after the commands still pending in the client (``round_trip``):
    nats-py's ``nc.flush`` wrote it ahead of them, so its PONG proved nothing of them."""
    from jetsource.core.natsping import round_trip
    from jetsource.eventstore.bootstrap import connect

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    try:
        nc = await aio.wait_for(connect(settings), within_s)
    except Exception:
        return False
    try:
        return await round_trip(nc, max(deadline - loop.time(), 0.1))
    except Exception:
        return False
    finally:
        with suppress(Exception):
            await nc.close()


def _eta(seconds: float | None) -> str:
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


def progress_line(what: str, meter: admin.Meter) -> str:
    return (
        f"{what}: {meter.done:,}/{meter.total:,} ({meter.percent:.1f}%), "
        f"{meter.rate:,.0f}/s, ETA {_eta(meter.eta_s)}"
    )


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback ``(done, total)``: a bar on a terminal; otherwise (piped,
    as ``kubectl logs`` sees it, or JSON output) a line on stderr every few seconds
    and one at the end."""
    from jetsource.projection import admin

    if output.mode() == Mode.table and sys.stdout.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=output.stdout(),
            transient=False,
        )
        task = bar.add_task(what, total=None)

        def draw(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with bar:
            yield draw
        return
    every_s = env_seconds("JETSOURCE_PROGRESS_EVERY_S", 5.0)
    meter: admin.Meter | None = None
    last = [0.0]
    as_json = output.mode() == Mode.json

    def say() -> None:
        assert meter is not None
        if as_json:
            line = json.dumps({"progress": {"what": what, **meter.snapshot()}})
        else:
            line = progress_line(what, meter)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def report(done: int, total: int) -> None:
        nonlocal meter
        if meter is None:
            meter = admin.Meter(done)
            last[0] = time.monotonic()
        meter.update(done, total)
        if time.monotonic() - last[0] >= every_s:
            last[0] = time.monotonic()
            say()

    yield report
    if meter is not None:
        say()


def _time(value: str | None, flag: str) -> int | None:
    if not value:
        return None
    return output.time_option(flag, value, int64=True, status="usage")


# -- status -----------------------------------------------------------------------------


def _progress_cell(row: dict[str, Any]) -> str:
    p = row.get("progress")
    if not p:
        return ""
    if "percent" not in p:
        return str(p.get("phase", ""))
    if row.get("state") == "stopped":  # nobody builds it: no rate, no ETA
        return f"{p['percent']:.1f}%, run the command again to resume"
    return f"{p['percent']:.1f}% {p['rate']:,.0f}/s ETA {_eta(p.get('eta_s'))}"


def _replay_cell(row: dict[str, Any]) -> str:
    r = row.get("last_replay")
    if not r:
        return ""
    return f"{r['run_id']} seq {r.get('last_seq')} {r.get('state', '')}"


@app.command()
def status(as_json: bool = JSON) -> None:
    """Every model version of every domain: state, lag, progress, last replay.

    Columns: state, active, checkpoint, applied, lag, dead letters, build progress
    (percent, rate, ETA) and the model's last replay run (run id, last replayed
    sequence). Exit 3 if a model's store did not answer (its row says so), or a
    stream it reads has no leader that can serve it (a NATS cluster that lost quorum).
    """
    from jetsource.projection import admin

    json_out = _json(as_json)

    async def work(p: Projection) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
        # Each stream it reads, and the control bucket's: a cluster that lost quorum
        # answers from a leader cut off from the others (a stale report), or not at
        # all, and status said nothing of it (exit 0, or rows of 503s naming nothing).
        streams = _all_streams(p)
        bucket = f"KV_{p.settings.projector.control_bucket}"
        rows, leaderless = await asyncio.gather(admin.status(p), _leaderless(p, [*streams, bucket]))
        # Each model version's durable consumer too (a consumer without a leader: its
        # model stands still, and only its stream was asked).
        leaderless |= await _leaderless_consumers(p, rows, leaderless)
        missing = await _absent(p, [s for s in streams if s not in leaderless])
        return rows, missing, leaderless

    rows, missing, leaderless = _run(work)
    if json_out:
        output.emit_json(rows)
    else:
        output.table(
            "",
            (
                "domain",
                "model",
                "version",
                "active",
                "state",
                "checkpoint",
                "applied",
                "lag",
                "dlq",
                "progress",
                "last replay",
            ),
            (
                (
                    r["domain"],
                    r["model"],
                    r["version"],
                    "yes" if r.get("active") else "",
                    r["state"] + (f" ({r['error']})" if r.get("error") else ""),
                    r.get("checkpoint"),
                    r.get("applied"),
                    r.get("lag"),
                    r.get("dead_letters"),
                    _progress_cell(r),
                    _replay_cell(r),
                )
                for r in rows
            ),
        )
    # A stream that does not exist: the report stays on stdout, the error names it
    # (exit 1, as a missing stream is in every group); a store that did not answer: 3.
    if missing:
        output.missing("refused", missing)
    if leaderless:
        _say_leaderless(leaderless)
    if down := [r for r in rows if r["state"] == "unavailable"]:
        _say_unavailable(down)


def _say_unavailable(down: list[dict[str, Any]]) -> NoReturn:
    """Models whose store did not answer: exit 3 with an error naming them and what
    their stores said (it was exit 3 with nothing on stderr, in JSON mode too: a script
    saw a failure and no error)."""
    by_error: dict[str, list[str]] = {}
    for r in down:
        version = "" if r["version"] == "-" else f" v{r['version']}"
        by_error.setdefault(str(r.get("error") or "no answer"), []).append(f"{r['model']}{version}")
    said = "; ".join(f"{', '.join(them)}: {why}" for why, them in by_error.items())
    output.fail(
        UNAVAILABLE,
        "unavailable",
        f"the store of {len(down)} read model{'s' if len(down) > 1 else ''} did not "
        f"answer ({said}): their rows say so, the others are current",
        hint="Valkey: JETSOURCE_VALKEY__URL, graph: JETSOURCE_GRAPH__URI",
        unavailable=[f"{r['model']}" for r in down],
    )


def _say_leaderless(leaderless: dict[str, str]) -> NoReturn:
    """Streams without a working leader: exit 3 (unavailable, as for NATS not
    answering), naming each and why (``leaderless`` in JSON)."""
    from jetsource.core.settings import redact_url

    names = list(leaderless)
    by_why: dict[str, list[str]] = {}
    for name, why in leaderless.items():
        by_why.setdefault(why, []).append(name)
    said = "; ".join(f"{', '.join(them)}: {why}" for why, them in by_why.items())
    kind = (
        "streams" if all(not n.startswith("consumer ") for n in names) else "streams and consumers"
    )
    if len(names) == 1:
        which = f"{names[0]} has" if names[0].startswith("consumer ") else f"stream {names[0]} has"
    else:
        which = f"{kind} {', '.join(names)} have"
    output.fail(
        UNAVAILABLE,
        "unavailable",
        f"{which} no leader that can serve them ({said}): the NATS cluster is electing "
        "one or lost quorum (more than half of its servers down or cut off), so what is "
        "shown for them may be stale and nothing is written to them until a majority "
        "is back",
        hint=f"NATS: {redact_url(_settings().nats_url())} (JETSOURCE_NATS__URL); start the "
        "missing servers",
        leaderless=names,
    )


# -- replay -----------------------------------------------------------------------------


def _replay_data(report: admin.ReplayReport) -> dict[str, Any]:
    return {
        "run_id": report.run_id,
        "model": report.model,
        "version": report.version,
        "selectors": report.selectors,
        "events": report.events,
        "aggregates": report.aggregates,
        "reapplied": report.reapplied,
        "carried_forward": report.carried_forward,
        "advanced": report.advanced,
        "last_seq": report.last_seq,
        "checkpoint": report.checkpoint,
        "failed": {str(k): v for k, v in sorted(report.failed.items())},
        "seconds": round(report.seconds, 3),
    }


@app.command()
def replay(
    model_arg: str | None = MODEL_ARG,
    model_opt: str | None = MODEL,
    aggregate: str | None = typer.Option(None, "--aggregate", help="One aggregate (story) id"),
    from_seq: int | None = typer.Option(
        None, "--from-seq", min=1, max=U64, help="First stream sequence"
    ),
    to_seq: int | None = typer.Option(
        None, "--to-seq", min=1, max=U64, help="Last stream sequence"
    ),
    from_time: str | None = typer.Option(
        None, "--from-time", help="RFC 3339 (Z or an offset), inclusive"
    ),
    to_time: str | None = typer.Option(
        None, "--to-time", help="RFC 3339 (Z or an offset), inclusive"
    ),
    types: list[str] | None = typer.Option(
        None, "--type", help="Event type, e.g. DecisionAdded (repeatable)"
    ),
    actor: str | None = typer.Option(
        None, "--actor", help="Events whose envelope metadata names this actor"
    ),
    run_id: str | None = typer.Option(None, "--run-id", help="Name the run (default: a uuid7)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say which events and stories would be replayed; write nothing"
    ),
    as_json: bool = JSON,
) -> None:
    """Re-apply a slice of the stream to the active version.

    Every selector given must match: aggregate, sequence range, time range, event
    types, actor. The run id and the last replayed event show in `projector status`.
    Exit 2 for an empty or inverted slice, 1 when it holds no applied event.
    --dry-run selects the slice the same way and says its events, stories and last
    sequence; what would re-apply or carry forward is known only by doing it (null).
    """
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(model_arg, model_opt)
    start, end = _time(from_time, "--from-time"), _time(to_time, "--to-time")
    try:
        admin.validate_slice(None, name, aggregate, from_seq, to_seq, start, end, types, actor)
        admin.validate_run_id(run_id)
    except admin.UsageError as exc:
        output.fail(USAGE, "usage", str(exc), field=exc.field)
    with _progress(f"replaying {name}") as update:
        report = _run(
            lambda p: admin.replay(
                p,
                name,
                aggregate,
                from_seq,
                to_seq,
                start,
                end,
                progress=update,
                event_types=types,
                actor=actor,
                run_id=run_id,
                dry_run=dry_run,
            ),
            _model_stream(name),
            stopped=f"the replay of {name} stopped (Ctrl-C): each story it wrote is whole "
            "(one atomic step each), the others are as they were; run the same command "
            "again to replay the slice (a replay is safe to repeat); `projector status` "
            "shows the run as stopped",
        )
    if dry_run and (report.events or report.failed):
        _replay_plan(report, run_id, json_out)
        return
    if not report.events and not report.failed:
        where = ", ".join(f"{k}={v}" for k, v in report.selectors.items())
        output.fail(
            REFUSED,
            "refused",
            f"the slice ({where}) holds no event {name} v{report.version} has applied "
            f"(its checkpoint is stream sequence {report.checkpoint}); nothing replayed",
        )
    if json_out:
        output.emit_json(_replay_data(report))
    else:
        output.line(
            f"{name} v{report.version} run {report.run_id}: "
            f"{output.count(report.events, 'event')} in the "
            f"slice (last sequence {report.last_seq}), {report.reapplied} re-applied, "
            f"{report.carried_forward} carried forward, "
            f"{output.count(report.aggregates, 'story')}, "
            f"{report.seconds:.1f} s"
        )
    if report.failed:
        if not json_out:
            for seq, reason in sorted(report.failed.items()):
                output.stderr().print(f"sequence {seq}: {reason}")
        output.fail(
            REFUSED, "refused", f"{output.count(len(report.failed), 'event')} failed to re-apply"
        )


def _replay_plan(report: admin.ReplayReport, run_id: str | None, json_out: bool) -> None:
    """What a replay would do: its slice; nothing was written, no run recorded (its id:
    the --run-id given, else made when it runs)."""
    unknown = {"run_id": run_id, "reapplied": None, "carried_forward": None, "advanced": None}
    if json_out:
        output.emit_json(_replay_data(report) | unknown | {"dry_run": True})
        return
    output.line(
        f"{report.model} v{report.version}: would replay "
        f"{output.count(report.events, 'event')} of {output.count(report.aggregates, 'story')} "
        f"(last sequence {report.last_seq}); what re-applies "
        "and what is carried forward shows only when it runs"
    )
    for seq, reason in sorted(report.failed.items()):
        output.line(f"  would leave sequence {seq}: {reason}")


# -- rebuild, reset, cutover, drop, wait ------------------------------------------------


def _built(report: admin.RebuildReport, **extra: Any) -> dict[str, Any]:
    return {
        "model": report.model,
        "version": report.version,
        "applied": report.applied,
        "checkpoint": report.checkpoint,
        "seconds": round(report.seconds, 3),
        "rate": round(report.rate, 1),
        **extra,
    }


@app.command()
def rebuild(
    model_arg: str | None = MODEL_ARG,
    model_opt: str | None = MODEL,
    to_version: int = typer.Option(..., "--to-version", min=1, max=MAX_VERSION),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=64,
        help="Build processes: K > 1 splits the stream in partitions (the service's "
        "JETSOURCE_PROJECTOR__PARTITIONS__COUNT, else K) built in parallel",
    ),
    as_json: bool = JSON,
) -> None:
    """Build a new version side by side; the projector then keeps it live.

    It starts from the model's replay_start; progress shows in `projector status`
    while it builds. With --workers K, K processes build it in parallel; the result
    equals a single-worker build.
    """
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(model_arg, model_opt)
    with _progress(f"building {name} v{to_version}") as update:
        report = _run(
            lambda p: admin.rebuild(p, name, to_version, progress=update, workers=workers),
            _model_stream(name),
            stopped=f"the build of {name} v{to_version} stopped (Ctrl-C); what it applied is "
            "kept: run the same command again to resume it",
        )
    if json_out:
        output.emit_json(_built(report))
        return
    output.line(
        f"{name} v{to_version} built: {output.count(report.applied, 'event')} applied in "
        f"{report.seconds:.1f} s ({report.rate:,.0f}/s), checkpoint {report.checkpoint}. "
        f"Next: `jetsource projector cutover --model {name} --to-version {to_version}`"
    )


@app.command()
def reset(
    model_arg: str | None = MODEL_ARG,
    model_opt: str | None = MODEL,
    yes: bool = typer.Option(False, "--yes", help="Confirm: the active version is emptied"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="make the reset's checks and say what it would empty"
    ),
    as_json: bool = JSON,
) -> None:
    """Truncate the ACTIVE version in place and rebuild it (needs --yes).

    It is rebuilt from the model's replay_start; queries see it empty, then growing.
    Its live worker is fenced first; the projector service resumes the version once
    it is rebuilt. --dry-run makes the same checks and names the version it would empty
    and its checkpoint; what the rebuild applies is known only by doing it (null).
    """
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(model_arg, model_opt)
    if dry_run:
        plan = _run(lambda p: admin.reset_plan(p, name), _model_stream(name))
        if json_out:
            unknown = {"applied": None, "seconds": None, "rate": None}
            output.emit_json(plan | unknown | {"reset": True, "dry_run": True})
            return
        what = (
            # A reset stopped after emptying it: the reset builds on, nothing emptied.
            "was emptied by a reset that stopped: would not be emptied again, its build "
            "would go on from the checkpoint"
            if plan["state"] == "building"
            else "would be emptied and rebuilt from the model's replay_start"
        )
        at = f"{name} v{plan['version']} ({plan['state']}, checkpoint {plan['checkpoint']})"
        output.line(f"{at} {what}")
        return
    if not yes:
        output.fail(
            USAGE,
            "usage",
            f"reset empties the active version of {name} and rebuilds it: add --yes to confirm",
            field="--yes",
        )
    with _progress(f"resetting {name}") as update:
        report = _run(
            lambda p: admin.reset(p, name, progress=update),
            _model_stream(name),
            stopped=f"the reset of {name} stopped (Ctrl-C); run the same command again to "
            "finish it (it resumes where it stopped)",
        )
    if json_out:
        output.emit_json(_built(report, reset=True))
        return
    output.line(
        f"{name} v{report.version} reset and rebuilt: "
        f"{output.count(report.applied, 'event')} applied in "
        f"{report.seconds:.1f} s ({report.rate:,.0f}/s), checkpoint {report.checkpoint}; "
        "the projector service resumes it"
    )


@app.command()
def cutover(
    model_arg: str | None = MODEL_ARG,
    model_opt: str | None = MODEL,
    to_version: int = typer.Option(..., "--to-version", min=1, max=MAX_VERSION),
    drop_old: bool = typer.Option(False, "--drop-old", help="Delete the previous version"),
    max_lag: int = typer.Option(1000, "--max-lag", min=0),
    as_json: bool = JSON,
) -> None:
    """Switch the version queries read, atomically.

    Refused (exit 1) for the version that is already active, one that is not live,
    or one lagging more than --max-lag.
    """
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(model_arg, model_opt)
    result = _run(
        lambda p: admin.cutover(p, name, to_version, drop_old, max_lag),
        _model_stream(name),
        stopped=f"the cutover of {name} to v{to_version} stopped (Ctrl-C): `projector status` "
        f"says whether v{to_version} is active; run the same command again to finish it "
        "(with --drop-old, the drop of the old version too)",
    )
    if json_out:
        output.emit_json(result)
        return
    dropped = f"; dropped v{result['previous']}" if "dropped" in result else ""
    output.line(f"{name}: active v{result['previous']} -> v{result['active']}{dropped}")


@app.command()
def drop(
    model_arg: str | None = MODEL_ARG,
    model_opt: str | None = MODEL,
    version: int = typer.Option(..., "--version", min=1, max=MAX_VERSION),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="make the drop's checks and say what it would delete"
    ),
    as_json: bool = JSON,
) -> None:
    """Delete an inactive model version (namespace and consumer).

    --dry-run makes the same checks (the same refusals) and names the version and its
    state; how many keys/nodes go is known only by deleting them (null)."""
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(model_arg, model_opt)
    if dry_run:
        state = _run(lambda p: admin.drop_plan(p, name, version), _model_stream(name))
        if json_out:
            output.emit_json(
                {"model": name, "version": version, "removed": None}
                | {"state": state, "dry_run": True}
            )
            return
        output.line(f"{name} v{version} ({state}) would be dropped: its namespace and consumer")
        return
    removed = _run(
        lambda p: admin.drop(p, name, version),
        _model_stream(name),
        stopped=f"the drop of {name} v{version} stopped (Ctrl-C): run the same command "
        "again to finish it",
    )
    if json_out:
        output.emit_json({"model": name, "version": version, "removed": removed})
        return
    output.line(f"{name} v{version} dropped ({output.count(removed, 'key/node', 'keys/nodes')})")


@app.command()
def wait(
    model_arg: str | None = MODEL_ARG,
    model_opt: str | None = MODEL,
    version: int = typer.Option(..., "--version", min=1, max=MAX_VERSION),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0.0, help="Seconds (default: wait for good)"
    ),
    as_json: bool = JSON,
) -> None:
    """Wait until a version is live and caught up (lag 0); exit 3 on timeout."""
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(model_arg, model_opt)
    result = _run(lambda p: admin.wait(p, name, version, timeout), _model_stream(name))
    if json_out:
        output.emit_json(result)
        return
    output.line(
        f"{name} v{version} is live and caught up (checkpoint {result['checkpoint']}, "
        f"waited {result['waited_s']:.1f} s)"
    )


# -- dead letters -----------------------------------------------------------------------


@dlq.command("list")
def dlq_list(
    model: str | None = MODEL_OPT,
    aggregate: str | None = typer.Option(None, "--aggregate"),
    as_json: bool = JSON,
) -> None:
    """Dead letters, oldest first (by the event's stream sequence, then filing time)."""
    from jetsource.core.clock import format_rfc3339_ns
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(None, model, required=False) or None
    try:
        admin.validate_aggregate(aggregate)
    except admin.UsageError as exc:
        output.fail(USAGE, "usage", str(exc), field=exc.field)
    letters = _run(lambda p: admin.dlq_list(p, name, aggregate), _dlq_stream)
    if json_out:
        output.emit_json([d.summary() for d in letters])
        return
    output.table(
        "",
        ("dlq seq", "model", "story", "stream seq", "tries", "time", "reason"),
        (
            (
                d.dlq_seq,
                d.summary()["model"],
                d.aggregate_id,
                d.original_seq,
                d.tries,
                format_rfc3339_ns(d.time_ns),
                d.reason,
            )
            for d in letters
        ),
    )
    output.line(output.count(len(letters), "dead letter"))


@dlq.command("show")
def dlq_show(
    dlq_seq: int | None = typer.Argument(
        None, min=1, max=U64, help="Dead-letter sequence (as --seq)", show_default=False
    ),
    seq: int | None = typer.Option(
        None, "--seq", min=1, max=U64, help="Dead-letter sequence (as retry and discard)"
    ),
    as_json: bool = JSON,
) -> None:
    """One dead letter in full (always JSON): --seq N (or N)."""
    from jetsource.projection import admin

    _json(as_json)
    if dlq_seq is not None and seq is not None and dlq_seq != seq:
        output.fail(
            USAGE, "usage", f"two sequences named: {dlq_seq} and --seq {seq}", field="--seq"
        )
    wanted = dlq_seq if dlq_seq is not None else seq
    if wanted is None:
        output.fail(USAGE, "usage", "name the dead letter: --seq N", field="--seq")

    async def get(p: Projection) -> dict[str, Any]:
        letter = await p.dead_letters.get(wanted)
        if letter is None:
            raise admin.AdminError(f"no dead letter with sequence {wanted}")
        out = letter.summary()
        out["data_hex"] = letter.data[:512].hex()
        return out

    output.emit_json(_run(get, _dlq_stream))


def _report(verb: str, report: admin.DlqReport, json_out: bool) -> None:
    if json_out:
        output.emit_json(
            {
                verb: sorted(report.done),
                "failed": {str(k): v for k, v in sorted(report.failed.items())},
            }
        )
    else:
        output.line(
            f"{output.count(len(report.done), 'dead letter')} {verb}, {len(report.failed)} failed"
        )
        for seq, reason in sorted(report.failed.items()):
            output.stderr().print(f"{seq}: {reason}")
    if report.failed:
        seqs = ", ".join(str(seq) for seq in sorted(report.failed))
        output.fail(
            REFUSED, "refused", f"{output.count(len(report.failed), 'dead letter')} failed: {seqs}"
        )


def _discard_plan(
    name: str | None, aggregate: str | None, seqs: list[int] | None, json_out: bool
) -> None:
    """The dead letters a discard would take; nothing discarded."""
    from jetsource.projection import admin

    plan = _run(lambda p: admin.dlq_discard(p, name, aggregate, seqs, dry_run=True), _dlq_stream)
    failed = {str(k): v for k, v in sorted(plan.failed.items())}
    if json_out:
        output.emit_json(
            {
                "discarded": None,
                "failed": failed,
                "would_discard": sorted(plan.done),
                "dry_run": True,
            }
        )
        return
    output.line(f"would discard {output.count(len(plan.done), 'dead letter')}: {sorted(plan.done)}")
    for seq, reason in failed.items():
        output.line(f"  {seq} would be refused: {reason}")


SEQS = typer.Option(None, "--seq", min=1, max=U64, help="Dead-letter sequence (repeatable)")


@dlq.command("retry")
def dlq_retry(
    model: str | None = MODEL_OPT,
    aggregate: str | None = typer.Option(None, "--aggregate"),
    seqs: list[int] | None = SEQS,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say which dead letters would be tried; apply nothing"
    ),
    as_json: bool = JSON,
) -> None:
    """Apply dead letters again (after a fix); each success removes its entry.

    --dry-run selects as the retry does and lists the letters in the order they would
    be tried; whether each applies is known only by applying it (applied: null)."""
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(None, model, required=False) or None
    try:
        admin.validate_aggregate(aggregate)
    except admin.UsageError as exc:
        output.fail(USAGE, "usage", str(exc), field=exc.field)
    if dry_run:
        plan = _run(lambda p: admin.dlq_retry(p, name, aggregate, seqs, dry_run=True), _dlq_stream)
        if json_out:
            output.emit_json(
                {"applied": None, "failed": {}, "would_retry": plan.done, "dry_run": True}
            )
            return
        output.line(f"would retry {output.count(len(plan.done), 'dead letter')}: {plan.done}")
        return
    with _progress("retrying dead letters") as update:
        report = _run(
            lambda p: admin.dlq_retry(p, name, aggregate, seqs, progress=update),
            _dlq_stream,
            stopped="the retry stopped (Ctrl-C): each letter applied so far is removed from "
            "the dead letters; run the same command again for the others",
        )
    _report("applied", report, json_out)


@dlq.command("discard")
def dlq_discard(
    model: str | None = MODEL_OPT,
    aggregate: str | None = typer.Option(None, "--aggregate"),
    seqs: list[int] | None = SEQS,
    yes: bool = typer.Option(False, "--yes", help="Do not ask"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say which dead letters would be discarded; change nothing"
    ),
    as_json: bool = JSON,
) -> None:
    """Give up on dead letters: their stories step past them without applying them.

    --dry-run selects and refuses as the discard does (a letter behind another of its
    story) and lists the letters that would go; nothing is discarded, no --yes needed."""
    from jetsource.projection import admin

    json_out = _json(as_json)
    name = _model(None, model, required=False) or None
    try:
        admin.validate_aggregate(aggregate)
    except admin.UsageError as exc:
        output.fail(USAGE, "usage", str(exc), field=exc.field)
    if not (seqs or aggregate):
        output.fail(USAGE, "usage", "name --seq or --aggregate to discard", field="--seq")
    if dry_run:
        _discard_plan(name, aggregate, seqs, json_out)
        return
    if not yes:
        if json_out or not sys.stdin.isatty():
            output.fail(
                USAGE, "usage", "discarding cannot be undone: add --yes to confirm", field="--yes"
            )
        typer.confirm("Discard these dead letters for good?", abort=True)
    report = _run(
        lambda p: admin.dlq_discard(p, name, aggregate, seqs),
        _dlq_stream,
        stopped="the discard stopped (Ctrl-C): each letter discarded so far is gone; run "
        "the same command again for the others",
    )
    _report("discarded", report, json_out)
