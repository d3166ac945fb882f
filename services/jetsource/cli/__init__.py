"""The `jetsource` command line.

``main`` loads the command line (:mod:`jetsource.cli.app`, half a second of imports)
itself, so a Ctrl-C while it loads is said as every other Ctrl-C is: one line, exit 130
(it was a traceback of whichever import it broke)."""

from __future__ import annotations

import os
import sys

# typing (10 ms of imports) only for the type checker: this module is imported before
# main can take a Ctrl-C (or SIGTERM) as one line; one while it loads was a traceback.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from types import ModuleType
    from typing import Any, NoReturn

    from jetsource.cli.app import app
else:
    import _signal  # signal's C half, loaded with the interpreter (signal: 10 ms of enum)

    ModuleType = type(sys)

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


# The signals that stopped the command line while it loaded ("Ctrl-C" or "SIGTERM").
_stopped_by: list[str] = []


def _sigterm_while_loading(signum: int, frame: Any) -> None:
    """SIGTERM while the command line loads is taken as Ctrl-C, as once it runs
    (:func:`jetsource.cli.app._sigterm_as_ctrl_c`): it was the default action, exit 143
    in silence."""
    _stopped_by.append("SIGTERM")  # the one signal it is put in place for
    raise KeyboardInterrupt


def _sigint_while_loading(signum: int, frame: Any) -> None:
    """Ctrl-C while the command line loads: Python's own KeyboardInterrupt, noted, so
    that an import it broke is known as one when it says something else (``import
    ssl`` is ``ImportError: PyCapsule_Import could not import module "_socket"``, a
    traceback)."""
    _stopped_by.append("Ctrl-C")
    raise KeyboardInterrupt


def forget_caught_interrupt() -> None:
    """Python (3.11, 3.12) under ``-m`` ends by SIGINT (returncode -2, where the
    ``cancelled`` line said exit 130) when a KeyboardInterrupt ended any string ``exec``
    (dataclasses and namedtuple make their methods so), caught or not: the flag saying
    so is cleared by the next string exec, this one. A KeyboardInterrupt let out after
    it still ends by SIGINT."""
    exec("None")


def stopped_before_run(args: list[str], by: str | None = None) -> NoReturn:
    """Ctrl-C (or SIGTERM, named: ``by``, or the one :func:`_sigterm_while_loading`
    took) before the command line was read (its modules loading, the Click command
    built): said as one inside a command is, on stderr, exit 130."""
    import json

    code = cancelled_code(group_of(args))
    message = STOPPED_BEFORE_DONE
    by = by or (_stopped_by[-1] if _stopped_by else None)
    if by:
        message = message.replace("Ctrl-C", by)
    line = f"{code}: {message}\n"
    if json_requested(args):
        body = {"code": code, "message": message, "exit_code": INTERRUPTED}
        line = json.dumps({"error": body}) + "\n"
    if sys.stderr is not None:  # closed (2>&-) and main not yet run
        sys.stderr.write(line)
        sys.stderr.flush()
    forget_caught_interrupt()
    sys.exit(INTERRUPTED)


class noting_signals:  # named as the function it is used as: with noting_signals():
    """Ctrl-C (and SIGTERM, taken as one) noted while modules load, so that an import it
    broke is said as the Ctrl-C it was (a KeyboardInterrupt out of the block) when it
    said something else (``import ssl``: ``ImportError: PyCapsule_Import could not
    import module "_socket"``, a traceback) or nothing: a KeyboardInterrupt raised in a
    weakref callback (the import system's, as it lets go of a module's lock) or in
    pydantic-core building a validator is only reported ("Exception ignored in ...")
    and the command went on, as if no signal had come. Python's own SIGINT handler is
    put back after (asyncio.run cancels the command on Ctrl-C only with it in place)."""

    def __enter__(self) -> None:
        self.noted = len(_stopped_by)
        # not where SIGINT is ignored (a job started with & from a script)
        self.ours = _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler
        if self.ours:
            try:
                _signal.signal(_signal.SIGINT, _sigint_while_loading)
            except ValueError:  # not the main thread: signals are the main thread's
                self.ours = False
        # the hook is the process's: not swapped from another thread (where no signal's
        # KeyboardInterrupt is raised), whose block could end after the main thread's
        self.hook = sys.unraisablehook if _in_main_thread() else None
        if self.hook is not None:
            sys.unraisablehook = _lost_interrupt_unsaid

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if self.hook is not None:
            sys.unraisablehook = self.hook
        if self.ours and _signal.getsignal(_signal.SIGINT) is _sigint_while_loading:
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        if len(_stopped_by) == self.noted or not isinstance(error, Exception | None):
            return  # no signal came, or its KeyboardInterrupt (SystemExit) goes on
        raise KeyboardInterrupt from error


def _in_main_thread() -> bool:
    """Whether this is the main thread (threading, 5 ms of imports, only looked at when
    something imported it: no thread was started through it otherwise)."""
    threading = sys.modules.get("threading")
    return threading is None or threading.current_thread() is threading.main_thread()


def _lost_interrupt_unsaid(unraisable: Any) -> None:
    """A KeyboardInterrupt Python could only report (``Exception ignored in ...``) is
    not said: the signal was noted (:class:`noting_signals`), and is said as one line."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def _closed_streams_to_devnull() -> None:
    """A standard stream closed when the command starts (``>&-``, ``2>&-``, ``<&-``) is
    /dev/null: Python made it None, and the first write, or a prompt, was an
    AttributeError (a traceback and exit 1 for ``--version >&-``; ``INTERNAL``, exit 1,
    for a confirmation with stdin closed, not the ``add --yes`` of one with no input;
    exit 1 for a usage error with stderr closed, not 2). Output with no reader is
    dropped, as a reader that left (``| head -1``) is; the exit code tells the rest."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            devnull = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            # as Python's own stderr: what it cannot encode is escaped, not an error
            errors = "backslashreplace" if fd == 2 else "strict"
            stream = open(fd, "r" if fd == 0 else "w", errors=errors, closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)
        except OSError:
            pass


class _StderrWithoutReader:
    """stderr, once its reader left (``2>&1 | head -1``, a log pipe closed), taking what
    is written to /dev/null: Click and Rich took its broken pipe for stdout's reader
    leaving, so a usage error ended with exit 0 (text) or 1 (JSON), not 2; the exit code
    is the command's, as it is with stderr closed from the start."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()
            self._stream.flush()

    def _to_devnull(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main() -> None:
    """The ``jetsource`` command (:func:`jetsource.cli.app.main`, which puts its own
    SIGTERM handler in place of the one taking it while the command line loads)."""
    _signal.signal(_signal.SIGTERM, _sigterm_while_loading)
    _closed_streams_to_devnull()
    sys.stderr = _StderrWithoutReader(sys.stderr)
    _stopped_by.clear()  # another run's, in this process (tests)
    try:
        try:
            with noting_signals():
                from jetsource.cli.app import main as run
        except KeyboardInterrupt:
            stopped_before_run(sys.argv[1:])
        try:
            run()
        except KeyboardInterrupt:  # before run put its handlers in place
            stopped_before_run(sys.argv[1:])
    finally:
        forget_caught_interrupt()


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer app, loaded on first use (as main loads it)
        from jetsource.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Cli(ModuleType):
    """``jetsource.cli.app`` is the Typer app (as when this module imported it), also
    once the submodule of that name is loaded: the import system binds the submodule
    here, which hid the lazy :func:`__getattr__`."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "app" and isinstance(value, ModuleType):
            value = value.app
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Cli
