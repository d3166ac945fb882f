"""The `jetsource` command line.

``main`` loads the command line (:mod:`jetsource.cli.app`, half a second of imports)
itself, so a Ctrl-C while it loads is said as every other Ctrl-C is: one line, exit 130
(it was a traceback of whichever import it broke)."""

from __future__ import annotations

import os
import signal
import sys
import types
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


# The signal (SIGTERM) that stopped the command line while it loaded, if not Ctrl-C.
_stopped_by: list[str] = []


def _sigterm_while_loading(signum: int, frame: Any) -> None:
    """SIGTERM while the command line loads is taken as Ctrl-C, as once it runs
    (:func:`jetsource.cli.app._sigterm_as_ctrl_c`): it was the default action, exit 143
    in silence."""
    _stopped_by.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def stopped_before_run(args: list[str]) -> NoReturn:
    """Ctrl-C (or SIGTERM, named) before the command line was read (its modules
    loading, the Click command built): said as one inside a command is, on stderr, exit
    130."""
    import json

    code = cancelled_code(group_of(args))
    message = STOPPED_BEFORE_DONE
    if _stopped_by:
        message = message.replace("Ctrl-C", _stopped_by[-1])
    if json_requested(args):
        body = {"code": code, "message": message, "exit_code": INTERRUPTED}
        sys.stderr.write(json.dumps({"error": body}) + "\n")
    else:
        sys.stderr.write(f"{code}: {message}\n")
    sys.stderr.flush()
    sys.exit(INTERRUPTED)


def main() -> None:
    """The ``jetsource`` command (:func:`jetsource.cli.app.main`, which puts its own
    SIGTERM handler in place of the one taking it while the command line loads)."""
    signal.signal(signal.SIGTERM, _sigterm_while_loading)
    try:
        from jetsource.cli.app import main as run
    except KeyboardInterrupt:
        stopped_before_run(sys.argv[1:])
    try:
        run()
    except KeyboardInterrupt:  # before run put its handlers in place
        stopped_before_run(sys.argv[1:])


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer app, loaded on first use (as main loads it)
        from jetsource.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Cli(types.ModuleType):
    """``jetsource.cli.app`` is the Typer app (as when this module imported it), also
    once the submodule of that name is loaded: the import system binds the submodule
    here, which hid the lazy :func:`__getattr__`."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "app" and isinstance(value, types.ModuleType):
            value = value.app
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Cli
