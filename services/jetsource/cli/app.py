"""Root of the `jetsource` command: sub-commands register here (each loaded on use).

Global options: ``--output table|json|plain`` (also ``JETSOURCE_OUTPUT``) and
``--version``. Exit codes: 0 ok, 1 refused by the server, 2 usage (or a confirmation not
given), 3 unavailable, 130 stopped by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Any, NoReturn

import typer
import typer.main

from jetsource.cli import (
    INTERRUPTED,
    STOPPED_BEFORE_DONE,
    cancelled_code,
    group_of,
    output,
)
from jetsource.cli import json_requested as _json_requested
from jetsource.cli.lazy import Entry, LazyCommands, LazyGroup


def _group(name: str, help: str) -> Entry:
    return Entry(f"jetsource.cli.{name}:app", help, group=True)


def _is_abort(exc: BaseException) -> bool:
    """Click's Abort (Typer's own copy, or click's): a prompt's answer to Ctrl-C or the
    end of input, or a confirmation answered no."""
    return any(c.__name__ == "Abort" for c in type(exc).__mro__)


# The root context's meta key for its command line (what _cancelled reads).
_ARGS = "jetsource.args"


def _cancelled(args: list[str], group: str | None, message: str) -> NoReturn:
    """The ``cancelled`` error (``CANCELLED`` in the gRPC groups), exit 130: JSON when
    the command line asks for it, even when the Ctrl-C came before the options were
    read."""
    if _json_requested(args):
        output.set_mode(output.Mode.json)
    elif output.mode() == output.Mode.json:  # another run's, in this process (tests)
        output.set_mode(None)
    output.fail(INTERRUPTED, cancelled_code(group or group_of(args)), message)


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    """``exc`` wraps a KeyboardInterrupt: Python 3.11 makes one that breaks a class's
    creation (an import in a command, a dataclass or pydantic field) a RuntimeError
    "Error calling __set_name__", which read "INTERNAL: unexpected RuntimeError", exit 1."""
    seen = set()
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:  # a cycle of causes ends
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__
    return False


# A confirmation declined ("n") or unanswered (the end of input) is the answer of the
# command run without --yes: exit 2, nothing done (130 is Ctrl-C's and SIGTERM's).
NOT_CONFIRMED = 2


def _aborted(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) of a command stopped at a prompt (:func:`_is_abort`):
    Ctrl-C there is ``cancelled``, exit 130; "n" or no input left is not confirmed,
    exit 2 (it was ``cancelled``, exit 130, as a Ctrl-C)."""
    if isinstance(exc.__context__, KeyboardInterrupt):
        return INTERRUPTED, STOPPED_BEFORE_DONE
    if isinstance(exc.__context__, EOFError):
        return (
            NOT_CONFIRMED,
            "no answer at the prompt (end of input): not confirmed, nothing was done",
        )
    return NOT_CONFIRMED, "not confirmed: nothing was done"


def _not_confirmed(args: list[str], message: str) -> NoReturn:
    """A prompt declined or unanswered: INVALID_ARGUMENT, exit 2, as the command run
    without --yes says it (JSON with -o json)."""
    if _json_requested(args):
        output.set_mode(output.Mode.json)
    elif output.mode() == output.Mode.json:  # another run's, in this process (tests)
        output.set_mode(None)
    output.fail(NOT_CONFIRMED, "INVALID_ARGUMENT", message)


class _Escaped(Exception):
    """An EOFError out of a command (``asyncio.IncompleteReadError`` is one), or the
    error of an Abort raised from one, carried past Typer, which takes every EOFError
    for a prompt's (``Abort`` from it: "Aborted." exit 1, or ``cancelled`` exit 130
    with -o json). :func:`main` says it as the unexpected error it is, as any other."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_NATS = "NATS with JetStream (JETSOURCE_NATS__URL)"
_MODELS = (
    f"Needs {_NATS}; a command that reads or writes a read model also its store: "
    "Valkey (JETSOURCE_VALKEY__URL) or the graph (JETSOURCE_GRAPH__URI). NATS is "
    "waited for JETSOURCE_ADMIN_CONNECT_TIMEOUT_S (10 s); exit 3 when one is away."
)
_PUBLISHER = "Needs the publisher (JETSOURCE_CLIENT__PUBLISHER or --publisher)"
_QUERY = "Needs the query service (JETSOURCE_CLIENT__QUERY or --query)"
_WAIT = "; waited for JETSOURCE_CLIENT__CONNECT_TIMEOUT_S (3 s), exit 3 when away."
# What each command's help says it needs (which server, the setting that points at
# it): by group, then by "group command" where a command differs from its group.
NEEDS = {
    "projector": _MODELS,
    "erase": _MODELS,
    "repair": _MODELS,
    "streams": f"Needs {_NATS}; exit 3 when it does not answer within --timeout.",
    "archive": f"Needs {_NATS} and the archive (JETSOURCE_ARCHIVE__URL); exit 3 when NATS is away.",
    "sessions": f"Needs {_NATS}; with JETSOURCE_SESSIONS__READER=query also the process "
    "query service (JETSOURCE_SESSIONS__PROCESS_QUERY); exit 3 when one is away.",
    "sessions catalog": "Needs no server.",
    "sessions import": f"Needs {_NATS}; with --observer also the observer at that "
    "address; exit 3 when one is away.",
    "omni": f"Needs {_NATS}; exit 3 when it is away.",
    "process": "Needs the process query service (JETSOURCE_CLIENT__PROCESS_QUERY or "
    "--process-query)" + _WAIT,
    "observe": "Needs the observer (JETSOURCE_CLIENT__OBSERVER or --observer); exit 3 "
    "when it is away.",
    "ctx": _QUERY + _WAIT,
    **{f"ctx {name}": _PUBLISHER + _WAIT for name in ("create", "decide", "subtask", "link")},
    "ctx close": _PUBLISHER + _WAIT,
}


def _say_needs(command: Any, path: str = "") -> None:
    """Each command's help ends with what it needs (:data:`NEEDS`)."""
    path = f"{path} {command.name}".strip()
    for sub in getattr(command, "commands", {}).values():
        _say_needs(sub, path)
    group = path.split(" ")[0]
    needs = NEEDS.get(path) or NEEDS.get(group)
    if needs and not hasattr(command, "commands") and not command.epilog:
        command.epilog = needs


def _stdout_to_devnull() -> None:
    """stdout's reader left: nothing more is written, and nothing fails at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _stdout_is_devnull() -> bool:
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError):
        return False


class _Root(LazyGroup):
    """The sub-commands, in the order the help lists them: each module is imported
    only when its command runs (``tests/unit/test_cli_startup.py`` holds these help
    lines to the modules' own)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        commands = self.commands
        assert isinstance(commands, LazyCommands)
        commands.on_load.append(_say_needs)

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        """Read the command line; Ctrl-C while it is read (a group's module loading)
        ends the command as one inside it does (:meth:`invoke`): Typer's answer was exit
        130 and nothing said."""
        words = list(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt:
            _cancelled(words, "", STOPPED_BEFORE_DONE)
        ctx.meta[_ARGS] = words
        return ctx

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # The command line, for the eager ``--version`` (its ``-o json`` may follow it).
        ctx.meta[_ARGS] = list(args)
        return list(super().parse_args(ctx, args))

    def invoke(self, ctx: Any) -> Any:
        """Run the command; Ctrl-C that no command handled itself (one waiting to
        connect, a read, a confirmation prompt) ends it as every group's own handler
        does: exit 130 with the ``cancelled`` error (Typer's own answer was exit 130 and
        nothing said, not even JSON with ``-o json``; at a prompt, Click's ``Aborted!``
        and exit 1, "refused by the server"). A prompt ended otherwise (no input left, a
        confirmation answered no) is the command run without --yes: exit 2, saying it
        was not confirmed and nothing was done. An EOFError out of a command is no
        prompt's (click makes those an Abort itself): an unexpected error, exit 1. A reader
        of stdout that left (``| head -1``) ends any command with exit 0 and nothing
        said, as the watches end: Click's answer was exit 1 ("refused by the server") in
        silence, or Python's exit 120 and a traceback-like line when the last write was
        only flushed at exit."""
        words = ctx.meta.get(_ARGS, [])
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a reader that left shows here, not at exit
            return result
        except KeyboardInterrupt:
            _cancelled(words, ctx.invoked_subcommand, STOPPED_BEFORE_DONE)
        except BrokenPipeError:
            _stdout_to_devnull()
            raise typer.Exit(0) from None
        except EOFError as exc:  # no prompt's: click makes those an Abort itself
            raise _Escaped(exc) from exc
        except Exception as exc:
            if _caused_by_ctrl_c(exc):
                _cancelled(words, ctx.invoked_subcommand, STOPPED_BEFORE_DONE)
            if not _is_abort(exc):
                raise
            if exc.__cause__ is not None:  # raised on an error, not by a prompt
                raise _Escaped(exc.__cause__) from exc
            code, message = _aborted(exc)
            if code == NOT_CONFIRMED:
                _not_confirmed(words, message)
            _cancelled(words, ctx.invoked_subcommand, message)

    entries = {  # noqa: RUF012
        "tui": Entry(
            "jetsource.cli.sessions:tui",
            "The terminal UI: sessions, processes, contexts, messages, dead letters.\n\n"
            "Keys: s sessions, p processes, c contexts, m messages, d dead letters, ? every "
            "key, q quit; / to type a filter or an id.",
            group=False,
        ),
        "erase": Entry(
            "jetsource.cli.erase:erase",
            "Erase SUBJECT's personal data: destroy their key, update the read models.",
            group=False,
        ),
        "up": Entry(
            "jetsource.cli.infra:up_all",
            "Start what is down of the local system (servers, then services) and show it\n"
            "working. Run it again after anything died: it restarts exactly that.",
            group=False,
        ),
        "down": Entry(
            "jetsource.cli.infra:down_all",
            "Stop the services, then the local servers.",
            group=False,
        ),
        "infra": _group("infra", "Local servers (NATS, Valkey, graph) from Python wheels."),
        "ctx": _group(
            "ctx",
            "Work a story's context: commands via the publisher, reads via the query service.",
        ),
        "projector": _group(
            "projector",
            "Read models: status, replay, rebuild, reset, cut over, drop, wait, dead letters."
            "\n\nEvery command takes --json. Exit codes: 0 ok, 1 refused, 2 usage (or a "
            "confirmation not given), 3 unavailable, 130 stopped by Ctrl-C or SIGTERM.",
        ),
        "streams": _group(
            "streams",
            "JetStream streams: provision them (idempotent), back them up, restore them.",
        ),
        "archive": _group(
            "archive",
            "The archive: compaction behind snapshots, export, verify, list, restore.",
        ),
        "repair": _group("repair", "Repair a poisoned story without deleting anything."),
        "observe": _group("observe", "Feed the process ledger: ingest adapters."),
        "process": _group(
            "process",
            "Read the process ledger: the registry, trees and timelines (ProcessQueryService).",
        ),
        "sessions": _group(
            "sessions",
            "Sessions: runs of commands recorded on the process ledger, and their event catalog.",
        ),
        "omni": _group("omni", "Messaging ingest (omni): raw payloads and identities."),
    }


app = typer.Typer(
    cls=_Root,
    help="jetsource: event-sourced Context Service on NATS JetStream.\n\n"
    "Exit codes: 0 ok, 1 refused by the server, 2 usage (or a confirmation not given), "
    "3 unavailable "
    "(not reachable or no answer in time: retry with the same -k key), "
    "130 stopped by Ctrl-C or SIGTERM (it says how to go on).",
    no_args_is_help=True,
)


def _version(ctx: typer.Context, value: bool) -> None:
    """Asked for JSON (``-o json`` before or after it, ``JETSOURCE_OUTPUT=json``):
    ``{"version": ...}``; it printed the text line. Eager: read before ``--output``
    is, so the command line ``_Root.parse_args`` kept is asked."""
    if value:
        from jetsource import __version__  # the version build_info reports

        if _output_asked(ctx.meta.get(_ARGS, [])) == "json":
            typer.echo(output.json_text({"version": __version__}))
        else:
            typer.echo(f"jetsource {__version__}")
        raise typer.Exit()


def _output_asked(args: list[str]) -> str:
    """The output ``args`` ask for as ``--output`` reads it: the last ``-o``/``--output``
    on the command line (``-o json -o table``: table), else ``JETSOURCE_OUTPUT`` (the
    command line wins over the environment); "" for neither. ``json_requested`` says
    JSON for any ``-o json`` or the environment, which is right for an error before
    the options are read but not for ``--version``, whose output is the option's."""
    asked = ""
    words = iter(args)
    for arg in words:
        if arg in ("-o", "--output"):
            asked = next(words, asked)
        elif arg.startswith("--output="):
            asked = arg.removeprefix("--output=")
        elif arg.startswith("-o") and not arg.startswith("--"):
            asked = arg.removeprefix("-o")
        elif arg == "--":
            break
    return (asked or os.environ.get("JETSOURCE_OUTPUT", "")).lower()


@app.callback()
def root(
    out: output.Mode | None = typer.Option(
        None,
        "--output",
        "-o",
        envvar="JETSOURCE_OUTPUT",
        case_sensitive=False,
        help="table (default on a terminal), plain (default when piped: tab-separated, "
        "no box drawing, no wrapping) or json",
    ),
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit"
    ),
) -> None:
    output.set_mode(out)
    # The NATS client's own reports (a reconnect attempt failed, ...) are for services'
    # logs: a command says what went wrong in its one error line (JSON with -o json).
    logging.getLogger("jetsource.nats").setLevel(logging.CRITICAL)
    output.capture_warnings()


def _sigterm_as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, ``timeout``, a CI limit, systemd) stops a command as Ctrl-C
    does: the command's own Ctrl-C handling runs (a replay or reset recorded
    ``stopped`` and its claim given back, ``erase`` saying what was left), exit 130 and
    one line saying how to go on. It was the default action: exit 143 in silence, the
    build left ``running``/``resetting`` in ``status`` until its heartbeat went stale.
    The SIGINT handler in place is called (asyncio.run's cancels the main task); with
    SIGINT ignored (a job started with ``&`` from a script) ``aio.interrupt`` does the
    same, or KeyboardInterrupt is raised. The ``cancelled`` line names SIGTERM (it said
    Ctrl-C)."""
    output.signal_arrived(signal.Signals(signum).name)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not _sigterm_as_ctrl_c:
        handler(signal.SIGINT, frame)
        return
    aio = sys.modules.get("jetsource.core.aio")  # loaded if a command runs one
    if aio is not None and aio.interrupt():
        return
    raise KeyboardInterrupt


def main() -> None:
    """The ``jetsource`` command. Asked for JSON, a usage error (a bad option value, an
    unknown option, a missing argument or command) is a JSON error on stderr as every
    other error is, exit 2, not Click's usage box. A setting that does not parse is a
    usage error naming its variable (exit 2); anything else unexpected is one line, exit
    1, never a traceback (``JETSOURCE_DEBUG=1`` shows it)."""
    as_json = _json_requested(sys.argv[1:])
    was_devnull = _stdout_is_devnull()
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        if not as_json:
            app()
            return
        rv = _command(as_json=True)(standalone_mode=False, prog_name="jetsource")
    except SystemExit as stop:
        # Click's and Rich's answer to a reader that left (``--help | head -1``): exit 1
        # in silence (Click wraps stdout, Rich points it at /dev/null). It is no
        # refusal: exit 0, as _Root.invoke ends a command's output cut short.
        left = type(sys.stdout).__name__ == "PacifyFlushWrapper" or (
            not was_devnull and _stdout_is_devnull()
        )
        if stop.code == 1 and left:
            _stdout_to_devnull()
            sys.exit(0)
        raise
    except KeyboardInterrupt:  # before the command line was read (Typer building it)
        _stopped_before_run(sys.argv[1:])
    except Exception as exc:
        _unexpected(exc, as_json)
    sys.exit(rv if isinstance(rv, int) else 0)


def _stopped_before_run(args: list[str]) -> NoReturn:
    """Ctrl-C (or SIGTERM, named) before the command line was read: the ``cancelled``
    error, exit 130, as :meth:`_Root.invoke` says it inside a command."""
    with contextlib.suppress(typer.Exit):  # output.fail's way out of a command
        _cancelled(args, None, STOPPED_BEFORE_DONE)
    sys.exit(INTERRUPTED)


def _command(as_json: bool) -> Any:  # typer's Click (it may bring its own copy)
    """The Click command of ``app``. For JSON, a group called without a command says
    "Missing command." (Typer's help would go to stdout, where JSON belongs)."""
    command = typer.main.get_command(app)
    if as_json:
        command.no_args_is_help = False
        commands = getattr(command, "commands", None)
        assert isinstance(commands, LazyCommands)
        commands.on_load.append(_no_help_without_command)
    return command


def _no_help_without_command(command: Any) -> None:
    """A group (and each group in it) called without a command: "Missing command.", not
    its help on stdout."""
    groups = [command]
    while groups:
        group = groups.pop()
        group.no_args_is_help = False
        groups += [c for c in getattr(group, "commands", {}).values() if hasattr(c, "commands")]


def _unexpected(exc: Exception, as_json: bool) -> NoReturn:
    """An exception no command handled: print it as an error, exit 1 or 2."""
    if isinstance(exc, _Escaped) and isinstance(exc.error, Exception):
        exc = exc.error
    kinds = {c.__name__ for c in type(exc).__mro__}  # Click's, by name: typer may bring its own
    if "Abort" in kinds and exc.__cause__ is not None and not _caused_by_ctrl_c(exc):
        # Typer's answer to an EOFError (no prompt's: click raises those itself)
        cause = exc.__cause__
        exc = cause if isinstance(cause, Exception) else exc
        kinds = {c.__name__ for c in type(exc).__mro__}
    if "Abort" in kinds or _caused_by_ctrl_c(exc):  # as _Root.invoke says it
        code = cancelled_code(group_of(sys.argv[1:]))
        exit_code, message = (
            (INTERRUPTED, STOPPED_BEFORE_DONE) if _caused_by_ctrl_c(exc) else _aborted(exc)
        )
        if exit_code == NOT_CONFIRMED:
            code = "INVALID_ARGUMENT"
        else:  # the signal that came (SIGTERM is taken as Ctrl-C)
            message = message.replace(output.CTRL_C, output.stop_signal())
        _error(as_json, {"code": code, "message": message, "exit_code": exit_code})
    if "ClickException" in kinds:
        body: dict[str, object] = {
            "code": "INVALID_ARGUMENT" if "UsageError" in kinds else "ERROR",
            "message": _usage_message(exc),
            "exit_code": int(getattr(exc, "exit_code", 2)),
        }
        param = getattr(exc, "param", None)
        if param is not None:
            body["field"] = (param.opts or [param.name])[0]
        elif getattr(exc, "option_name", None):  # no such option, or one without its value
            body["field"] = exc.option_name  # type: ignore[attr-defined]
        _error(as_json, body)
    if "ValidationError" in kinds and _settings_error(exc):
        message = output.settings_message(exc)  # type: ignore[arg-type]
        body = {"code": "INVALID_ARGUMENT", "message": message, "exit_code": 2}
        # The variable at fault, as every other usage error names its option.
        fields = output.settings_fields(exc)  # type: ignore[arg-type]
        if fields:
            body["field"] = fields[0]
        _error(as_json, body)
    if "DomainsError" in kinds:  # JETSOURCE_PROJECTOR__DOMAINS names no registry
        field = getattr(exc, "field", None)
        _error(
            as_json,
            {"code": "INVALID_ARGUMENT", "message": str(exc), "exit_code": 2, "field": field},
        )
    if os.environ.get("JETSOURCE_DEBUG"):
        raise exc
    message = f"unexpected {type(exc).__name__}: {exc} (a bug; JETSOURCE_DEBUG=1 shows where)"
    _error(as_json, {"code": "INTERNAL", "message": message, "exit_code": 1})


def _settings_error(exc: Exception) -> bool:
    import pydantic  # imported already by whatever raised it

    return isinstance(exc, pydantic.ValidationError) and exc.title.endswith("Settings")


def _usage_message(exc: Exception) -> str:
    message: str = exc.format_message()  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    names = sorted(getattr(getattr(ctx, "command", None), "commands", {}) or {})
    if message == "Missing command." and names:
        message = f"Missing command: one of {', '.join(names)}."
    return message


def _error(as_json: bool, body: dict[str, object]) -> NoReturn:
    code = int(body["exit_code"])  # type: ignore[call-overload]
    if as_json:
        sys.stderr.write(output.json_text({"error": body}) + "\n")
    else:
        sys.stderr.write(f"{body['code']}: {body['message']}\n")
    sys.stderr.flush()
    sys.exit(code)
