"""How each service process runs: logging (structured, jetsource.core.logging) and
tracing (jetsource.core.telemetry, when configured) from settings, then its serve
coroutine on uvloop (the loop's own work per request, wakeups from gRPC's poller
thread and NATS, timers, task steps, costs less than asyncio's: about a fifth of the
publisher's instructions per command); a server that refuses the service's
credentials, or an address it cannot listen on, ends it with one clear line and exit
code 2 (restarting cannot help), never a retry loop or a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from jetsource.core import telemetry
from jetsource.core.errors import AccessDeniedError, ListenError
from jetsource.core.logging import setup_logging
from jetsource.core.settings import JetsourceSettings

S = TypeVar("S", bound=JetsourceSettings)
EXIT_ACCESS_DENIED = 2  # also: cannot listen where configured (ListenError)


def use_uvloop() -> None:
    """Run this process's loops on uvloop, where it is installed (a dependency on every
    platform but Windows)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_service(name: str, settings: S, serve: Callable[[S], Coroutine[Any, Any, None]]) -> None:
    setup_logging(
        name,
        settings.log_level,
        json=settings.log_json,
        repeat_window_s=settings.log_repeat_window_s,
    )
    telemetry.setup_tracing(name, settings.otel)
    use_uvloop()
    try:
        asyncio.run(serve(settings))
    except (AccessDeniedError, ListenError) as exc:
        logging.getLogger(f"jetsource.{name}").error("%s cannot start: %s", name, exc)
        telemetry.shutdown()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Now, without the interpreter's teardown: what serve() had started (a gRPC
        # server whose loop is gone) would print tracebacks from its finalizers.
        os._exit(EXIT_ACCESS_DENIED)
    finally:
        telemetry.shutdown()  # the spans still queued are sent
