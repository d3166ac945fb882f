"""How the `jetsource` command prints: one place for output modes, errors and exit codes.

``--output table`` draws Rich tables (the default on a terminal), ``plain`` writes
tab-separated lines with no box drawing and no wrapping (the default when stdout is
not a terminal), ``json`` writes one JSON document (or one per line for streams).
User data is never read as Rich markup. Errors go to stderr.

Exit codes: 0 ok, 1 refused by the server, 2 usage (a confirmation prompt answered no or
not at all too, as without ``--yes``), 3 unavailable (not reachable, timed out,
overloaded: retry with the same idempotency key), 130 interrupted (Ctrl-C or SIGTERM).
A stream or bucket that does not exist is 1 in every group (``missing``): retrying will
not help until what creates it has run.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from jetsource.core.clock import TIME_EXAMPLE, parse_time_ns
from jetsource.core.printable import UNSAFE, escape
from jetsource.core.settings import shown_input

# grpc, protobuf and Rich are imported where they are used: every command imports this
# module, and most need one of them at most (``tests/unit/test_cli_startup.py``).
if TYPE_CHECKING:
    import grpc
    import pydantic
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console
    from rich.text import Text

OK, REFUSED, USAGE, UNAVAILABLE = 0, 1, 2, 3

# gRPC codes (by name) that mean "no answer": the command may or may not have been applied.
UNAVAILABLE_NAMES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"}
)


class Mode(StrEnum):
    table = "table"
    json = "json"
    plain = "plain"


_state: dict[str, Mode | None] = {"mode": None}


def set_mode(mode: Mode | str | None) -> None:
    """The global ``--output`` (None: decide from the terminal)."""
    _state["mode"] = Mode(mode) if mode is not None else None


def mode(override: Mode | str | None = None) -> Mode:
    if override is not None:
        return Mode(override)
    chosen = _state["mode"]
    if chosen is not None:
        return chosen
    return Mode.table if sys.stdout.isatty() else Mode.plain


_consoles: dict[bool, Console] = {}


def stdout() -> Console:
    """The one stdout console (so a pager around a command's output gets all of it)."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    if tty not in _consoles:
        # Piped (``-o table | less -S``): no wrapping at 80 columns, tables as wide as they are.
        _consoles[tty] = Console(
            markup=False,
            highlight=False,
            emoji=False,
            soft_wrap=True,
            width=None if tty else 100_000,
        )
    return _consoles[tty]


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, markup=False, highlight=False, emoji=False, soft_wrap=True)


# -- option checks ---------------------------------------------------------------------

# The longest --timeout: gRPC turns a larger deadline (1e308, inf) into one already
# passed, which read as "no answer: the command may have been applied".
MAX_SECONDS = 100_000_000.0
# The request fields' wire types: a larger number is a usage error here, not a
# protobuf ValueError (a traceback) after connecting.
I32, I64, U32, U64 = 2**31 - 1, 2**63 - 1, 2**32 - 1, 2**64 - 1


def user_name() -> str:
    """The default of an ``--actor`` option: the login name ($USER, $LOGNAME, or the
    password database's entry for the process's uid), "" when there is none (a container
    run under a uid with no entry and no $USER: getpass raised KeyError, which the
    commands answered INTERNAL "a bug" before writing anything)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def seconds(value: float | None) -> float | None:
    """An option callback: a number of seconds, finite, above 0, at most MAX_SECONDS."""
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise typer.BadParameter(
            f"{value:g} is not a number of seconds above 0 and at most {MAX_SECONDS:,.0f}"
        )
    return value


def seconds_or_zero(value: float | None) -> float | None:
    """As ``seconds``, 0 allowed."""
    return value if value == 0 else seconds(value)


# -- counts -----------------------------------------------------------------------------


def plural(noun: str) -> str:
    """``story`` -> ``stories``, ``process`` -> ``processes``, ``event`` -> ``events``
    (the last word of ``dead letter``)."""
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def count(n: int, noun: str, many: str | None = None) -> str:
    """A count and its noun, singular for exactly 1: ``1 story``, ``2 stories``,
    ``0 events`` (text output said "1 stories"; JSON keeps its numbers)."""
    return f"{n} {noun if n == 1 else many or plural(noun)}"


# -- times ------------------------------------------------------------------------------

# Every option that takes a time (``--at``, ``--from-time``, ``--started-from``, ...)
# takes this one grammar: RFC 3339 with ``Z`` or any offset (read as that instant, in
# UTC), seconds with up to 9 fractional digits or none.


def time_option(
    flag: str, text: str, *, int64: bool = False, status: str = "INVALID_ARGUMENT"
) -> int:
    """``parse_time_ns`` for an option: a bad time is a usage error (exit 2) naming the
    option and showing an accepted one (one JSON line with ``-o json``)."""
    try:
        return parse_time_ns(text, int64=int64)
    except ValueError as exc:
        fail(
            USAGE,
            status,
            f"{flag} {text!r}: {exc}; e.g. {TIME_EXAMPLE}",
            field=flag,
        )


def target(value: str | None) -> str | None:
    """An option callback for ``host:port``: given, it must say something (an empty
    ``--publisher "$UNSET"`` would otherwise reach the default server)."""
    if value is not None and (not value.strip() or any(c.isspace() for c in value)):
        raise typer.BadParameter(f"{value!r} is not host:port")
    return value


def not_utf8(exc: UnicodeEncodeError) -> str:
    """The message for an argument that is not UTF-8 text (bytes a terminal or a file
    name passed on, read by Python as lone surrogates)."""
    text = exc.object if isinstance(exc.object, str) else ""
    shown = text[:60].encode("utf-8", "backslashreplace").decode("utf-8")
    return f"an argument is not UTF-8 text ({shown}); nothing was sent"


# -- data ------------------------------------------------------------------------------


def data(message: Message) -> dict[str, Any]:
    """A protobuf message as plain JSON data: every field present (defaults too), enums
    by name, 64-bit integers as numbers (not strings), Timestamps as RFC 3339."""

    out: dict[str, Any] = {}
    field: Any
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.containing_oneof is not None and not message.HasField(field.name):
            continue
        if _is_map(field):
            out[field.name] = {
                k: _value(field.message_type.fields_by_name["value"], v) for k, v in value.items()
            }
        elif _is_repeated(field):
            out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    return out


def _is_repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def _is_map(field: Any) -> bool:
    from google.protobuf.descriptor import FieldDescriptor

    return (
        _is_repeated(field)
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


def _value(field: Any, value: Any) -> Any:
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.timestamp_pb2 import Timestamp

    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if isinstance(value, Timestamp):
            return timestamp(value)
        return data(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.hex()
    return value


def timestamp(value: Timestamp) -> str | None:
    if value.seconds == 0 and value.nanos == 0:
        return None
    when = datetime.fromtimestamp(value.seconds, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.nanos:09d}Z"


def natural_key(text: str) -> tuple[Any, ...]:
    """d1 < d2 < d10: digit runs compare as numbers."""
    parts = tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part
    )
    return (parts, text)


# -- printing --------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    sys.stdout.write(json_text(value) + "\n")
    sys.stdout.flush()


def json_text(value: Any) -> str:
    r"""``value`` as JSON, every character :data:`UNSAFE` names (a bidi override or
    isolate, DEL, C1, which json writes raw) as its ``\uXXXX`` escape: the same string
    to a JSON reader, never reordering or recolouring a terminal it is shown in."""
    text = json.dumps(value, ensure_ascii=False)
    return UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _shown(match: re.Match[str]) -> str:
    ch = match.group()
    return ch if ch in "\t\n" else escape(ch)


def printable(text: str) -> str:
    r"""``text`` with every character that must not reach a terminal raw shown as an
    escape (``\x1b``, ``\u202e``; jetsource.core.printable): control characters but
    tab and newline, and bidi overrides. Stored data may hold them (an ESC starts a
    terminal escape sequence, a CR rewrites the line)."""
    return UNSAFE.sub(_shown, text)


def line(text: str | Text = "") -> None:
    """One line of text on stdout, printed literally (control characters escaped;
    a ``Text`` is the caller's to escape, with ``printable``)."""
    if mode() == Mode.table:
        stdout().print(printable(text) if isinstance(text, str) else text)
    else:
        sys.stdout.write(printable(str(text)) + "\n")
        sys.stdout.flush()


def _raw_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(_raw_cell(v) for v in value)
    if isinstance(value, dict):  # JSON, as the data of events: never Python's repr
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _cell(value: Any) -> str:
    return printable(_raw_cell(value))


def _plain_cell(value: Any) -> str:
    text = _raw_cell(value)
    return printable(text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n"))


def table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    console: Console | None = None,
) -> None:
    """A table: Rich (cells never read as markup) or tab-separated lines with a header."""
    rows = list(rows)
    if mode() == Mode.table:
        from rich.table import Table
        from rich.text import Text

        t = Table(*columns, title=title or None, title_justify="left")
        for row in rows:
            t.add_row(*(Text(_cell(v)) for v in row))
        (console or stdout()).print(t)
        return
    out = []
    if title:
        out.append(f"# {title}")
    out.append("\t".join(columns))
    out.extend("\t".join(_plain_cell(v) for v in row) for row in rows)
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """``name: value`` lines (values printed literally)."""
    for name, value in pairs:
        if mode() == Mode.table:
            from rich.text import Text

            stdout().print(Text.assemble((f"{name}: ", "bold"), _cell(value)))
        else:
            sys.stdout.write(f"{name}: {_plain_cell(value)}\n")
    sys.stdout.flush()


class Warnings(logging.Handler):
    """Warnings the libraries log while a command works (a store retried: "replay
    context: valkey: ...; again in 0.4s") on stderr: the message as it is, or with
    ``-o json`` one line ``{"warning": "..."}``, so stderr stays JSON lines (it was
    Python's last-resort text before the JSON error)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if mode() == Mode.json:
                text = json_text({"warning": text})
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except Exception:  # a warning never fails the command
            self.handleError(record)


def capture_warnings() -> None:
    """Route the warnings logged during a command through ``Warnings`` (once)."""
    root = logging.getLogger()
    if not any(isinstance(h, Warnings) for h in root.handlers):
        root.addHandler(Warnings())


# -- errors ----------------------------------------------------------------------------

# The signal that stopped the command when it was not Ctrl-C (SIGINT): the CLI's
# SIGTERM handler (taken as Ctrl-C) and `observe import`'s own handlers say it here.
_stopped_by: list[str] = []
CTRL_C = "Ctrl-C"


def signal_arrived(name: str) -> None:
    """``name`` (``SIGTERM``) stops the command: its ``cancelled`` line names it."""
    _stopped_by.append(name)


def stop_signal() -> str:
    """How the command was stopped, as its ``cancelled`` line says it."""
    return _stopped_by[-1] if _stopped_by else CTRL_C


_STOPPED_WORD = re.compile(r"\b(stopped|interrupted)\b(?! \()")


def _name_the_signal(message: str) -> str:
    """A ``cancelled`` message naming the signal that arrived: the "(Ctrl-C)" the
    commands wrote is "(SIGTERM)" after a SIGTERM (it said Ctrl-C for both), and one
    naming none ("interrupted", "stopped midway") gets it after that word."""
    name = stop_signal()
    if CTRL_C in message:
        return message.replace(CTRL_C, name)
    if name in message:
        return message
    return _STOPPED_WORD.sub(lambda m: f"{m.group(1)} ({name})", message, count=1)


def fail(code: int, status: str, message: str, **extra: Any) -> NoReturn:
    """Print an error on stderr and exit with ``code``: ``STATUS: message`` (then the
    ``hint`` line, if any), or with ``--output json`` one line ``{"error": {"code",
    "message", "exit_code", ...extra}}``. Every group reports its errors here. A
    ``field`` (the option or argument at fault) is named in the text too."""
    field = extra.get("field")
    if status == "usage":
        # A refused argument is INVALID_ARGUMENT in every group, as Click's own usage
        # errors and the ctx commands' are (README: exit codes): the admin groups
        # (projector, repair, streams, archive, erase) said "usage".
        status = "INVALID_ARGUMENT"
    if status.lower() == "cancelled":
        message = _name_the_signal(message)
    if mode() == Mode.json:
        body = {"code": status, "message": message, "exit_code": code}
        body.update({k: v for k, v in extra.items() if v is not None})
        sys.stderr.write(json_text({"error": body}) + "\n")
    else:
        from rich.text import Text

        if field and str(field) not in message:
            message = f"{message} (field: {field})"
        text = Text.assemble((status, "bold red"), ": ", printable(message))
        console = stderr()
        console.print(text)
        hint = extra.get("hint")
        if hint:
            console.print(hint)
    sys.stderr.flush()
    raise typer.Exit(code)


ENSURE_HINT = "create the streams: jetsource streams ensure"
INGEST_HINT = "the ingest service creates it when it starts (jetsource-ingest)"


def missing(
    status: str, names: str | Sequence[str], hint: str = ENSURE_HINT, what: str = "stream"
) -> NoReturn:
    """Streams (or a bucket) the command needs do not exist: the same answer in every
    group, exit 1 (REFUSED: retrying will not help until ``hint`` is done), naming them
    (``missing``, a list, in JSON) and what creates them. ``status``: the group's code
    word (``FAILED_PRECONDITION`` where codes are gRPC names, ``refused`` in the admin
    groups)."""
    names = [names] if isinstance(names, str) else list(names)
    said = f"{what} {names[0]} does not exist"
    if len(names) > 1:
        said = f"{what}s {', '.join(names)} do not exist"
    fail(REFUSED, status, said, hint=hint, missing=names)


def refusal(exc: BaseException) -> str | None:
    """A JetStream API error that is a refusal of the server's own (its store or a
    limit full, JetStream off, a stream sealed: ``eventstore.refusals``), in words with
    its remedy; None for any other error. Every admin group answers it exit 3 (free
    space, then run it again), as it does a refusal the command's code named: it was
    exit 1 "refused: JetStream error 503/10023: insufficient resources"."""
    from jetsource.eventstore.refusals import refused_from

    named = refused_from(exc, "")
    return None if named is None else str(named)


def stream_named(text: str) -> str | None:
    """The stream a ``StreamMissingError`` / ``NoRespondersError`` text names: ``stream
    X not found``, ``stream X does not exist: ...`` or the bare name."""
    match = re.match(r"(?:stream )?([A-Za-z0-9_-]+)(?: |:|$)", text.strip())
    return match.group(1) if match else None


def exit_code(code: grpc.StatusCode, details: str = "") -> int:
    """Exit 3 (retry) for a status a retry can cure, else 1. RESOURCE_EXHAUSTED is
    usually a busy server, but a message over gRPC's size limit stays over it however
    often it is sent: that one is refused (exit 1)."""
    if code.name == "RESOURCE_EXHAUSTED" and "larger than max" in details:
        return REFUSED
    return UNAVAILABLE if code.name in UNAVAILABLE_NAMES else REFUSED


def settings_fields(exc: pydantic.ValidationError) -> list[str]:
    """The environment variables of the settings that did not parse, in the order
    ``settings_message`` says them: a JSON error's ``field`` is the first (none: no
    ``field``). A list's index is no variable (``JETSOURCE_OMNI__INSTANCES``, not
    ``..._INSTANCES__0``). A section's own check (a model validator: its ``loc`` is the
    section, ``JETSOURCE_EVENTSTORE``, a prefix and no variable) names the section's
    settings its message names (``retention age needs max_age_s > 0``: RETENTION,
    MAX_AGE_S), else none; any other error at a section names the section's variable
    (``JETSOURCE_EVENTSTORE=5``: not an object; that variable is the one at fault)."""
    fields: list[str] = []
    for error in exc.errors():
        loc = list(error["loc"])
        cut = next((i for i, part in enumerate(loc) if isinstance(part, int)), len(loc))
        names = [_variable(loc[:cut])] if cut == len(loc) or cut > 0 else []
        section = _section(exc.title, loc) if cut == len(loc) else None
        if section is not None and error["type"] in ("value_error", "assertion_error"):
            given = error.get("input")
            named = _named_in(
                str(error["msg"]), loc, given if isinstance(given, dict) else {}, section
            )
            names = named
        fields.extend(n for n in names if n not in fields)
    return fields


def _section(title: str, loc: Sequence[int | str]) -> Any:
    """The model when ``loc`` ends at a section of the settings class named ``title``
    (a model: its own check's error), not at a setting (a dict setting's input is a
    mapping too); else None."""
    import pydantic
    import pydantic_settings

    todo: list[type] = [pydantic_settings.BaseSettings]
    model: Any = None
    while todo and model is None:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        model = cls if cls.__name__ == title else None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            return None
        model = fields[part].annotation
    return model if isinstance(model, type) and issubclass(model, pydantic.BaseModel) else None


def _named_in(
    message: str, loc: Sequence[int | str], given: dict[str, Any], section: Any
) -> list[str]:
    """The variables a section check's message names: JETSOURCE_* names as they are,
    and the section's own settings by name (one given, or one of its fields)."""
    own = getattr(section, "model_fields", {})
    named = []
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message):
        if word.startswith("JETSOURCE_"):
            named.append(word)
        elif word in given or word in own:
            named.append(_variable([*loc, word]))
    return named


def _variable(loc: Sequence[int | str]) -> str:
    return "JETSOURCE_" + "__".join(str(part) for part in loc).upper()


def settings_message(exc: pydantic.ValidationError) -> str:
    """Each setting that did not parse, by its environment variable:
    ``JETSOURCE_PROJECTOR__BATCH_SIZE='abc': Input should be a valid integer, ...``."""
    parts = []
    for error in exc.errors():
        name = _variable(error["loc"])
        # Secrets not echoed, credentials in a URL masked, as the services show them.
        value = shown_input(name, error)
        # A validator's own message, without pydantic's "Value error, " before it.
        parts.append(f"{name}{value}: {str(error['msg']).removeprefix('Value error, ')}")
    return "bad setting: " + "; ".join(parts)
