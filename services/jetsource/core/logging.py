"""Service logs: structlog, one line per record, on stderr.

:func:`setup_logging` (called by :func:`jetsource.core.runner.run_service` for every
service) routes the standard library's ``logging`` through structlog's
``ProcessorFormatter``, so the code's ``logging.getLogger(...).warning("%s ...", x)``
calls come out structured without being rewritten. Every line carries ``timestamp``
(UTC, ISO 8601), ``level``, ``service``, ``logger`` and the message; ``extra={...}``
fields (``model``, ``version``, ``aggregate``, ``seq`` ...) become keys of their own,
and ``trace_id``/``span_id`` are added while an OpenTelemetry span is active.

Two renderings: JSON lines (``{"timestamp": ..., "level": "warning", ...,
"message": ...}``), the default when stderr is not a terminal (containers, the local
stack's log files), and colourless ``key=value`` text on a terminal.
``JETSOURCE_LOG_JSON`` true/false chooses explicitly, ``JETSOURCE_LOG_LEVEL`` sets
the level.

Repeats are rate-limited: the same warning or error (same logger, level and text, or
the same ``extra={"rate_key": ...}``) is written at most once per window
(``JETSOURCE_LOG_REPEAT_WINDOW_S``, 10 s); the next one written carries
``repeats_suppressed=N``, the number left out since the last one. An outage of a
store thus gives a line every few seconds per worker, not one per redelivery.

asyncio's "returning true from eof_received() has no effect when using ssl", written at
every close of a NATS connection over TLS, is dropped (:class:`SslEofNoiseFilter`).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from jetsource.core import telemetry
from jetsource.core.printable import UNSAFE, escape

# The handler this module installs on the root logger (replaced by a second setup).
_HANDLER_NAME = "jetsource"
SUPPRESSED = "repeats_suppressed"
RATE_KEY = "rate_key"


class RepeatFilter(logging.Filter):
    """Lets through the first of identical records at WARNING and above, then at most
    one per ``window_s`` per key; each one let through after a pause says how many
    were left out (``record.repeats_suppressed``). Lower levels always pass."""

    def __init__(
        self,
        window_s: float,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.level = level
        self.clock = clock
        self.max_keys = max_keys
        # key -> [time of the last line written, repeats left out since]
        self._seen: dict[Any, list[float]] = {}
        self._lock = threading.Lock()

    def key(self, record: logging.LogRecord) -> Any:
        explicit = getattr(record, RATE_KEY, None)
        if isinstance(record.msg, dict):  # a structlog call: its event dict
            explicit = record.msg.get(RATE_KEY, explicit)
            text = str(record.msg.get("event"))
        else:
            text = record.getMessage()
        if explicit is not None:
            return (record.name, record.levelno, "key", str(explicit))
        return (record.name, record.levelno, "text", text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.window_s <= 0 or record.levelno < self.level:
            return True
        key = self.key(record)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                return False
            suppressed = int(seen[1]) if seen is not None else 0
            self._seen[key] = [now, 0]
            if len(self._seen) > self.max_keys:
                self._prune(now)
        if suppressed:
            record.__dict__[SUPPRESSED] = suppressed
        return True

    def _prune(self, now: float) -> None:
        for k in [k for k, (at, n) in self._seen.items() if now - at >= self.window_s and not n]:
            del self._seen[k]
        while len(self._seen) > self.max_keys:  # still full: forget the oldest
            del self._seen[next(iter(self._seen))]


# asyncio's TLS transport says this when its protocol's eof_received() asks to keep a
# connection half open, which TLS cannot. nats-py upgrades a NATS connection to TLS with
# loop.start_tls and a StreamReaderProtocol of its own, whose connection_made start_tls
# never calls: the protocol does not know it runs over TLS, and asks that each time the
# server closes the connection (a restart, a failover). The connection is closed and
# reconnected as it should be: the line says nothing, at every close of every
# connection. Only this exact message is dropped; asyncio's other lines pass.
SSL_EOF_NOISE = "returning true from eof_received() has no effect when using ssl"


class SslEofNoiseFilter(logging.Filter):
    """Drops asyncio's :data:`SSL_EOF_NOISE` line, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "asyncio" and record.getMessage() == SSL_EOF_NOISE)


def _quiet_ssl_eof() -> None:
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, SslEofNoiseFilter) for f in asyncio_log.filters):
        asyncio_log.addFilter(SslEofNoiseFilter())


# Fields of every line of this process: ``worker`` (its index) in a supervised worker
# (jetsource.core.workers), whose lines were otherwise the same as its siblings'.
_process_fields: dict[str, Any] = {}


def tag_process(**fields: Any) -> None:
    """Put ``fields`` on every log line of this process from now on."""
    _process_fields.update(fields)


def _add_service(service: str) -> Processor:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("service", service)
        for key, value in _process_fields.items():
            event.setdefault(key, value)
        return event

    return add


def _add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    ids = telemetry.current_ids()
    if ids is not None:
        event.setdefault("trace_id", ids[0])
        event.setdefault("span_id", ids[1])
    return event


def _from_record(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """What the record says besides the message: repeats left out; no rate key."""
    record = event.get("_record")
    suppressed = getattr(record, SUPPRESSED, None) if record is not None else None
    if suppressed:
        event[SUPPRESSED] = suppressed
    event.pop(RATE_KEY, None)
    # uvicorn's coloured copy of its message (extra=): ANSI codes around %-placeholders
    # it never fills in, on every line of its own, a field of no documented meaning.
    event.pop("color_message", None)
    return event


# The longest a string value of a line may be (the traceback: EXCEPTION_MAX_CHARS); a
# longer one keeps its head and its tail around a note of how much was cut. A value a
# client sent (a path, a message in an error) used to be written whole: 1 MB in, a 1 MB
# line, which Docker's and the CRI's log drivers split at 16 KiB into pieces that are
# no JSON; a line now stays under that.
FIELD_MAX_CHARS = 4096
EXCEPTION_MAX_CHARS = 8192


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit // 4  # a traceback's end (the error) matters most: keep more tail
    tail = limit - head
    return f"{text[:head]}...[{len(text) - head - tail} characters cut]...{text[-tail:]}"


def _bound_values(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Each string value cut to FIELD_MAX_CHARS (``exception``: EXCEPTION_MAX_CHARS)."""
    for key, value in event.items():
        if isinstance(value, str):
            limit = EXCEPTION_MAX_CHARS if key == "exception" else FIELD_MAX_CHARS
            if len(value) > limit:
                event[key] = _cut(value, limit)
    return event


# What must not reach a terminal raw (core.printable: C0, DEL, C1 and the bidi marks):
# shown escaped in key=value text, where a newline in a value forged a line of its own
# and an ANSI escape a client sent reached the operator's terminal.
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _shown(match: re.Match[str]) -> str:
    ch = match.group()
    return _SHORT.get(ch) or escape(ch)


def _escape_controls(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Key=value text: unsafe characters in string values written escaped (JSON
    escapes control characters itself)."""
    for key, value in event.items():
        if isinstance(value, str) and key != "exception":
            event[key] = UNSAFE.sub(_shown, value)
    return event


_FIRST = ("timestamp", "level", "service", "logger", "message")


def _first_keys(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The fields every line has first, in one order, then the rest."""
    head = {k: event.pop(k) for k in _FIRST if k in event}
    return {**head, **event}


def setup_logging(
    service: str,
    level: str | int = "INFO",
    json: bool | None = None,
    repeat_window_s: float = 10.0,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route every log record of the process (stdlib ``logging`` and structlog) to one
    handler on ``stream`` (stderr). ``json`` None: JSON unless ``stream`` is a
    terminal. Calling it again replaces the handler it installed before."""
    out = stream if stream is not None else sys.stderr
    if json is None:
        isatty = getattr(out, "isatty", None)
        json = not (isatty is not None and isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_service(service),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    renderer: list[Processor]
    if json:
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            _bound_values,
            _first_keys,
            structlog.processors.JSONRenderer(),
        ]
    else:
        renderer = [
            _bound_values,
            _escape_controls,
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            _from_record,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter(repeat_window_s))

    root = logging.getLogger()
    for old in list(root.handlers):
        # An earlier setup's handler, or basicConfig's, would print every line twice.
        if old.get_name() == _HANDLER_NAME or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    _quiet_ssl_eof()

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler


def bind(**fields: Any) -> None:
    """Fields added to every line this task logs from here on (structlog contextvars)."""
    structlog.contextvars.bind_contextvars(**fields)
