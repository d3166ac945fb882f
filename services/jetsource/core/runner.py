"""How each service process runs: logging (structured, jetsource.core.logging) and
tracing (jetsource.core.telemetry, when configured) from settings, then its serve
coroutine on uvloop (the loop's own work per request, wakeups from gRPC's poller
thread and NATS, timers, task steps, costs less than asyncio's: about a fifth of the
publisher's instructions per command); a server that refuses the service's
credentials, or an address it cannot listen on, ends it with one clear line and exit
code 2 (restarting cannot help), never a retry loop or a traceback. So does a setting
that does not validate or a file setting naming no readable file
(:func:`load_settings`); a ``JETSOURCE_*`` variable that sets nothing (a misspelt
name) is logged as a warning with the closest real name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import pydantic

from jetsource.core import grpcserver, telemetry
from jetsource.core.aio import stop_others
from jetsource.core.errors import AccessDeniedError, ListenError
from jetsource.core.logging import setup_logging, tag_process
from jetsource.core.settings import (
    JetsourceSettings,
    missing_files,
    secrets_dir,
    settings_error,
    tls_problems,
    unknown_secret_files,
    unknown_variables,
)

S = TypeVar("S", bound=JetsourceSettings)
EXIT_ACCESS_DENIED = 2  # also: cannot listen where configured (ListenError)
EXIT_BAD_SETTING = 2  # a setting that does not validate, a file setting that names none
EXIT_FAILED = 1  # serve() failed: its error, logged as one record
EXIT_INTERRUPTED = 130  # SIGINT before the service handles it (as a shell reports it)


def load_settings(name: str, settings_class: type[S]) -> S:
    """``settings_class.load()`` for the service ``name``, with its logging set up. A
    setting that does not validate, a ``..._FILE`` setting that names no readable
    file, or a TLS block whose files do not go together or do not load as PEM, ends
    the process at once with exit 2 and one line naming the variable(s):
    ``publisher cannot start: bad setting: JETSOURCE_PUBLISHER__GRPC_PORT='abc': ...``
    (it used to be a pydantic traceback, or for a missing TLS file a traceback from the
    first connection). Variables that set nothing are warned about, one line each: by
    the supervisor alone when the service runs as workers (each worker's lines carry
    ``worker``, its index)."""
    worker = _worker_index(name)
    if worker is not None:
        tag_process(worker=worker)
    try:
        settings = settings_class.load()
    except pydantic.ValidationError as exc:
        setup_logging(name, "INFO", json=_json_logs())
        _exit(EXIT_BAD_SETTING, f"{name} cannot start: {settings_error(exc, settings_class)}", name)
    _logging_of(name, settings)
    problems = missing_files(settings)
    problems = problems or tls_problems(settings)
    if problems:
        _exit(EXIT_BAD_SETTING, f"{name} cannot start: bad setting: {'; '.join(problems)}", name)
    if worker is not None:
        return settings  # its supervisor read the same settings and warned once
    log = logging.getLogger(f"jetsource.{name}")
    for line in unknown_variables(settings_class, os.environ):
        log.warning("%s", line)
    for line in unknown_secret_files(settings_class, secrets_dir()):
        log.warning("%s", line)
    return settings


def _worker_index(name: str) -> int | None:
    """This process's index when a supervisor runs it as one of the service's workers
    (``JETSOURCE_<NAME>__WORKER_INDEX``, jetsource.core.workers.worker_env), else None.
    Only an index a supervisor gives (0 to MAX_WORKERS - 1, ASCII digits): any other
    value is not this process's index, and the settings then refuse it (exit 2 naming
    the variable); a digit ``int()`` does not take ("²", which ``isdigit`` passed)
    ended the process in a traceback before, and 1000 was taken as worker 1000."""
    from jetsource.core.workers import supervised_index  # it imports this module

    return supervised_index(os.environ.get(f"JETSOURCE_{name.upper()}__WORKER_INDEX", ""))


def _logging_of(name: str, settings: JetsourceSettings) -> None:
    """The process's logging as ``settings`` say (again: it replaces the handler)."""
    setup_logging(
        name,
        settings.log_level,
        json=settings.log_json,
        repeat_window_s=settings.log_repeat_window_s,
    )


def _json_logs() -> bool | None:
    """JETSOURCE_LOG_JSON as the settings would read it, for the line that says the
    settings did not validate (None: the default, or a value that does not parse)."""
    text = os.environ.get("JETSOURCE_LOG_JSON", "").strip().lower()
    return {"1": True, "true": True, "yes": True, "on": True}.get(
        text, False if text in ("0", "false", "no", "off") else None
    )


def use_uvloop() -> None:
    """Run this process's loops on uvloop, where it is installed (a dependency on every
    platform but Windows)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_service(name: str, settings: S, serve: Callable[[S], Coroutine[Any, Any, None]]) -> None:
    _logging_of(name, settings)
    telemetry.setup_tracing(name, settings.otel)
    use_uvloop()
    code = 0
    try:
        asyncio.run(_serving(name, settings, serve))
        _ignore_stop_signals()
    except Exception as exc:
        # Logged as one record (JSON: one line, the traceback in its "exception" field),
        # not Python's own multi-line traceback between the JSON lines: a JetStream
        # refusal at start (a stream the server cannot create as configured, e.g.
        # JETSOURCE_EVENTSTORE__REPLICAS=3 on a single server) was only a traceback.
        logging.getLogger(f"jetsource.{name}").error(
            "%s failed: %s: %s", name, type(exc).__name__, exc, exc_info=exc
        )
        code = EXIT_FAILED
    except asyncio.CancelledError:
        if not grpcserver.stop_requested:
            raise
        _ignore_stop_signals()  # stopped while starting (said so): exit 0
    except KeyboardInterrupt:  # Ctrl-C before the service's own signal handling began
        logging.getLogger(f"jetsource.{name}").warning("%s interrupted while starting", name)
        code = EXIT_INTERRUPTED
    finally:
        telemetry.shutdown()  # the spans still queued are sent
    if code:
        sys.exit(code)


def _ignore_stop_signals() -> None:
    """After the loop, whose handlers turned SIGTERM and SIGINT into a graceful stop,
    has closed (closing it restores their default action): the service has stopped,
    and what remains (the interpreter's exit: gRPC's and the exporters' threads) is
    not cut short by a second SIGTERM into exit 143 (the observer took about a second
    there, and a repeated stop signal, as some supervisors send, failed it)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(sig, signal.SIG_IGN)


# How long the tasks serve() leaves behind get to end when it returns or fails.
STOP_LEFTOVERS_S = 5.0


async def _serving(name: str, settings: S, serve: Callable[[S], Coroutine[Any, Any, None]]) -> None:
    """``serve(settings)``, then the tasks it left running stopped within a bound.

    asyncio.run's own teardown cancels each task once and waits for it without a
    bound: a task whose cancellation a library swallowed (``wait_for`` on Python 3.11,
    see jetsource.core.aio) kept the process alive for ever, saying nothing. CI met it
    when the ingress could not listen: its identity follower, started a moment
    before, swallowed the one cancel and the process never exited."""
    error: BaseException | None = None
    _stop_while_starting(name)
    try:
        await serve(settings)
    except (AccessDeniedError, ListenError) as exc:
        # At once, from inside the loop: what serve() had started (a gRPC server, a
        # stream follower) is not waited for, and prints nothing from its finalizers.
        _exit(EXIT_ACCESS_DENIED, f"{name} cannot start: {exc}", name)
    except ValueError as exc:
        # A setting found unusable only where it is used (JETSOURCE_PROJECTOR__DOMAINS
        # naming no registry: projection.bootstrap.DomainsError, whose ``field`` names
        # it) ends the service as any bad setting does: exit 2, one line naming it.
        if str(getattr(exc, "field", "")).startswith("JETSOURCE_"):
            _exit(EXIT_BAD_SETTING, f"{name} cannot start: bad setting: {exc}", name)
        error = exc
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        left = await stop_others(STOP_LEFTOVERS_S)
        if left:
            if error is not None and not isinstance(error, asyncio.CancelledError):
                log = logging.getLogger(f"jetsource.{name}")
                log.error("%s failed: %s", name, error, exc_info=error)
            names = ", ".join(sorted(t.get_name() for t in left))
            code = 0 if error is None else 1
            _exit(code, f"{name} leaves tasks that did not stop: {names}", name)


def _stop_while_starting(name: str) -> None:
    """Until the service handles SIGTERM and SIGINT itself (grpcserver.stop_on_signals
    replaces this handler), one stops its start: what it is waiting for (NATS not up
    yet, a stream being created) is cancelled and it exits 0 saying so. SIGTERM had its
    default action there: exit 143 with no word, and for a moment after the service
    said it was listening."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def stop() -> None:
        if not grpcserver.stop_requested:
            grpcserver.stop_requested = True
            logging.getLogger(f"jetsource.{name}").info("%s stopped while starting", name)
            if main is not None:
                main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop)


def _exit(code: int, message: str, name: str) -> NoReturn:
    """Log ``message``, flush what is buffered and end the process with ``code`` now,
    without the interpreter's teardown."""
    logging.getLogger(f"jetsource.{name}").error("%s", message)
    telemetry.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
