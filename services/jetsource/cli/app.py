"""Root of the `jetsource` command: sub-commands register here.

Global options: ``--output table|json|plain`` (also ``JETSOURCE_OUTPUT``) and
``--version``. Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 unavailable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

import pydantic
import typer
import typer.main

from jetsource.cli import (
    archive,
    ctx,
    erase,
    infra,
    observe,
    omni,
    output,
    process,
    projector,
    repair,
    sessions,
    streams,
)

app = typer.Typer(
    help="jetsource: event-sourced Context Service on NATS JetStream.\n\n"
    "Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 unavailable "
    "(not reachable or no answer in time: retry with the same -k key).",
    no_args_is_help=True,
)
app.add_typer(infra.app, name="infra")
app.add_typer(ctx.app, name="ctx")
app.add_typer(projector.app, name="projector")
app.add_typer(streams.app, name="streams")
app.add_typer(archive.app, name="archive")
app.add_typer(repair.app, name="repair")
app.add_typer(observe.app, name="observe")
app.add_typer(process.app, name="process")
app.add_typer(sessions.app, name="sessions")
app.add_typer(omni.app, name="omni")
app.command("tui")(sessions.tui)
app.command("erase")(erase.erase)
app.command("up")(infra.up_all)
app.command("down")(infra.down_all)


def _version(value: bool) -> None:
    if value:
        try:
            number = version("jetsource")
        except PackageNotFoundError:  # running from a source tree that was not installed
            number = "unknown"
        typer.echo(f"jetsource {number}")
        raise typer.Exit()


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


def _json_requested(args: list[str]) -> bool:
    """Whether the command line (or JETSOURCE_OUTPUT) asks for JSON: ``-o json``,
    ``--output json``, ``--output=json``, ``-ojson`` or a command's ``--json``."""
    if os.environ.get("JETSOURCE_OUTPUT", "").lower() == "json":
        return True
    for i, arg in enumerate(args):
        if arg == "--json" or arg.lower() in ("--output=json", "-ojson"):
            return True
        if arg in ("-o", "--output") and i + 1 < len(args) and args[i + 1].lower() == "json":
            return True
    return False


def main() -> None:
    """The ``jetsource`` command. Asked for JSON, a usage error (a bad option value, an
    unknown option, a missing argument or command) is a JSON error on stderr as every
    other error is, exit 2, not Click's usage box. A setting that does not parse is a
    usage error naming its variable (exit 2); anything else unexpected is one line, exit
    1, never a traceback (``JETSOURCE_DEBUG=1`` shows it)."""
    as_json = _json_requested(sys.argv[1:])
    try:
        if not as_json:
            app()
            return
        rv = _command(as_json=True)(standalone_mode=False, prog_name="jetsource")
    except Exception as exc:
        _unexpected(exc, as_json)
    sys.exit(rv if isinstance(rv, int) else 0)


def _command(as_json: bool) -> Any:  # typer's Click (it may bring its own copy)
    """The Click command of ``app``. For JSON, a group called without a command says
    "Missing command." (Typer's help would go to stdout, where JSON belongs)."""
    command = typer.main.get_command(app)
    if as_json:
        groups = [command]
        while groups:
            group = groups.pop()
            group.no_args_is_help = False
            groups += [c for c in getattr(group, "commands", {}).values() if hasattr(c, "commands")]
    return command


def _unexpected(exc: Exception, as_json: bool) -> NoReturn:
    """An exception no command handled: print it as an error, exit 1 or 2."""
    kinds = {c.__name__ for c in type(exc).__mro__}  # Click's, by name: typer may bring its own
    if "Abort" in kinds:
        _error(as_json, {"code": "ABORTED", "message": "aborted", "exit_code": 1})
    if "ClickException" in kinds:
        body: dict[str, object] = {
            "code": "INVALID_ARGUMENT" if "UsageError" in kinds else "ERROR",
            "message": _usage_message(exc),
            "exit_code": int(getattr(exc, "exit_code", 2)),
        }
        param = getattr(exc, "param", None)
        if param is not None:
            body["field"] = (param.opts or [param.name])[0]
        _error(as_json, body)
    if isinstance(exc, pydantic.ValidationError) and exc.title.endswith("Settings"):
        body = {"code": "INVALID_ARGUMENT", "message": output.settings_message(exc), "exit_code": 2}
        _error(as_json, body)
    if os.environ.get("JETSOURCE_DEBUG"):
        raise exc
    message = f"unexpected {type(exc).__name__}: {exc} (a bug; JETSOURCE_DEBUG=1 shows where)"
    _error(as_json, {"code": "INTERNAL", "message": message, "exit_code": 1})


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
        sys.stderr.write(json.dumps({"error": body}, ensure_ascii=False) + "\n")
    else:
        sys.stderr.write(f"{body['code']}: {body['message']}\n")
    sys.stderr.flush()
    sys.exit(code)
