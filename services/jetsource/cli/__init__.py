"""The `jetsource` command line.

``main`` loads the command line (:mod:`jetsource.cli.app`, half a second of imports)
itself, so a Ctrl-C while it loads is said as every other Ctrl-C is: one line, exit 130
(it was a traceback of whichever import it broke)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from jetsource.cli.app import app

__all__ = ["app", "main"]

# Groups whose error codes are gRPC status names (README "One error format in every
# group"): Ctrl-C is CANCELLED there, ``cancelled`` in the NATS admin groups.
GRPC_CODE_GROUPS = frozenset({"ctx", "process", "sessions", "observe", "omni", "tui"})
# Exit code of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT).
INTERRUPTED = 130
STOPPED_BEFORE_DONE = "stopped (Ctrl-C) before it was done"


def json_requested(args: list[str]) -> bool:
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


def group_of(args: list[str]) -> str:
    """The group (or top command) a command line names: its first word that is neither
    an option nor the value of ``-o``/``--output``."""
    words = iter(args)
    for arg in words:
        if arg in ("-o", "--output"):
            next(words, None)
        elif not arg.startswith("-"):
            return arg
    return ""


def cancelled_code(group: str) -> str:
    """How a Ctrl-C is named in ``group``: ``CANCELLED`` where codes are gRPC's."""
    return "CANCELLED" if group in GRPC_CODE_GROUPS else "cancelled"


def stopped_before_run(args: list[str]) -> NoReturn:
    """Ctrl-C before the command line was read (its modules loading, the Click command
    built): said as one inside a command is, on stderr, exit 130."""
    import json

    code = cancelled_code(group_of(args))
    if json_requested(args):
        body = {"code": code, "message": STOPPED_BEFORE_DONE, "exit_code": INTERRUPTED}
        sys.stderr.write(json.dumps({"error": body}) + "\n")
    else:
        sys.stderr.write(f"{code}: {STOPPED_BEFORE_DONE}\n")
    sys.stderr.flush()
    sys.exit(INTERRUPTED)


def main() -> None:
    """The ``jetsource`` command (:func:`jetsource.cli.app.main`)."""
    try:
        from jetsource.cli.app import main as run
    except KeyboardInterrupt:
        stopped_before_run(sys.argv[1:])
    run()


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer app, loaded on first use (as main loads it)
        from jetsource.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
