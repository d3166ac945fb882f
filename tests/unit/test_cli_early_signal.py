"""Ctrl-C or SIGTERM in the first milliseconds of ``python -m jetsource`` is said as in
any command (README: exit codes): one ``cancelled`` line (JSON with -o json), exit 130.

It was a Python traceback (KeyboardInterrupt) while ``jetsource/__init__.py`` imported
typing and functools (14 ms, run by runpy before any handling of ours), and while
``jetsource.cli`` imported typing and signal (its enum), before ``main`` took Ctrl-C;
SIGTERM there was the default action, killed in silence (143), where the contract is
130 naming SIGTERM (``test_cli_interrupt_anywhere``). ``jetsource.__main__`` now takes
both from its first line, and the two packages import only what the interpreter loaded
already.

What comes before any module of ours is the interpreter's: a signal before it takes
signals at all is the default action (killed by it, nothing said: the shell's 128+n),
and Ctrl-C while it runs ``site`` (the .pth files) or imports ``runpy`` is its own
traceback, none of whose frames is ours.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jetsource
from tests.cli_env import clean_environ
from tests.unit.test_cli_interrupt_anywhere import said_on as said

STOPPED = "stopped ({}) before it was done"
OURS = str(Path(jetsource.__file__).parent)

# ``python -m jetsource ARGV`` (as runpy runs it) with the signal raised or sent at the
# K-th import a module of ours asks for: wherever its first lines are when it comes.
AT_OUR_KTH_IMPORT = """
import os, signal, sys

K, HOW, OURS = int(sys.argv[1]), sys.argv[2], sys.argv[3]
asked = []

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        frame = sys._getframe(1)
        while frame is not None and not frame.f_code.co_filename.startswith(OURS):
            frame = frame.f_back
        if frame is None:  # the interpreter's, runpy's: not ours
            return None
        asked.append(name)
        if len(asked) == K + 1:
            sys.stdout.write(f"at {name}\\n")
            if HOW == "SIGINT":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["jetsource", *sys.argv[4:]]
import runpy

runpy._run_module_as_main("jetsource")
"""


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("k", range(6))
def test_a_signal_at_the_entrys_first_imports_is_one_line(k: int, how: str, as_json: bool) -> None:
    argv = [*(["-o", "json"] if as_json else []), "ctx", "show", "c1"]
    run = subprocess.run(
        [sys.executable, "-c", AT_OUR_KTH_IMPORT, str(k), how, OURS, *argv],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    where = run.stdout.strip()
    assert where.startswith("at "), (run.returncode, run.stdout, run.stderr)
    # was 1 and a traceback (SIGINT), -15 and nothing said (SIGTERM)
    assert run.returncode == 130, (where, run.returncode, run.stderr)
    name = "Ctrl-C" if how == "SIGINT" else "SIGTERM"
    assert said(run.stderr, as_json) == ("CANCELLED", STOPPED.format(name)), where


def _not_ours(stderr: str) -> bool:
    """A traceback of the interpreter's start (site, runpy): no frame of ours."""
    frames = [line for line in stderr.splitlines() if line.strip().startswith("File ")]
    return bool(frames) and not any(OURS in line for line in frames)


def _lost_before_ours(stderr: str, as_json: bool) -> bool:
    """A Ctrl-C Python lost before any module of ours ran (runpy importing the jetsource
    package: its KeyboardInterrupt raised in the import system's weakref callback, only
    reported): the report, no frame of ours, then the command's own end, unanswered."""
    lines = stderr.strip().splitlines()
    if not lines or not lines[0].startswith("Exception ignored in:") or OURS in stderr:
        return False
    if "KeyboardInterrupt" not in stderr:
        return False
    last = json.loads(lines[-1])["error"]["code"] if as_json else lines[-1].partition(":")[0]
    return bool(last == "unavailable")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_the_first_moments_is_one_line_or_before_python(
    sig: signal.Signals, as_json: bool
) -> None:
    """A real signal at several delays after the start: never a traceback of ours, and
    once any module of ours runs, exit 130 and the one line. The last one is sent once
    the command is connecting (to a server that accepts and never answers). A signal
    Python lost before then ends the command at its short --timeout (exit 3)."""
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    argv = [*(["-o", "json"] if as_json else []), "streams", "ensure", "--timeout", "5"]
    outcomes = []
    for delay in [0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, None]:
        # a server of its own per run: an earlier run's connection is never the one
        # accepted below as this run's
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)
            silent.settimeout(60)
            env = clean_environ() | {
                "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{silent.getsockname()[1]}",
            }
            child = subprocess.Popen(
                [sys.executable, "-m", "jetsource", *argv],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                if delay is None:
                    conn, _ = silent.accept()  # running: connecting
                    conn.close()
                else:
                    time.sleep(delay)
                child.send_signal(sig)
                _, err = child.communicate(timeout=60)  # a bound for a lost signal
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
        outcomes.append((delay, child.returncode, err))
    for delay, code, err in outcomes:
        if sig == signal.SIGINT and code in (1, -sig) and _not_ours(err):
            pass  # the interpreter's own start (site, runpy) was broken
        elif sig == signal.SIGINT and delay is not None and code == 3:
            assert _lost_before_ours(err, as_json), (delay, err)  # else: lost by us
        elif code == -sig:  # before the interpreter took signals: the default action
            assert err == "", (delay, err)
        else:
            assert code == 130, (delay, code, err)
            assert said(err, as_json) == ("cancelled", STOPPED.format(name)), delay
    assert outcomes[-1][1] == 130


# Put in place before ``python -m jetsource`` runs (sitecustomize, from PYTHONPATH): at
# the first import of AT, HOW: a KeyboardInterrupt that ends a string exec (as one in
# a dataclass's or namedtuple's making does), a real SIGINT ("signal"), or the signal
# named by HOW handled in a weakref callback (the import system's own, as it lets go of
# a module's lock), where Python reports its KeyboardInterrupt and goes on.
SITECUSTOMIZE = """
import os, signal, sys

AT, HOW = os.environ["AT_IMPORT"], os.environ["HOW"]

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == AT:
            sys.meta_path.remove(self)
            if HOW == "exec":
                exec("raise KeyboardInterrupt")
            elif HOW == "signal":
                signal.raise_signal(signal.SIGINT)
            else:  # in a weakref callback, where Python only reports its exception
                import weakref

                class Gone:
                    pass

                gone = Gone()
                ref = weakref.ref(gone, lambda ref: signal.raise_signal(getattr(signal, HOW)))
                del gone
        return None

sys.meta_path.insert(0, Interrupt())
"""


def run_m(tmp_path: Path, at: str, how: str, as_json: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    argv = [*(["-o", "json"] if as_json else []), "ctx", "show", "c1"]
    env = clean_environ() | {"PYTHONPATH": str(tmp_path), "AT_IMPORT": at, "HOW": how}
    return subprocess.run(
        [sys.executable, "-m", "jetsource", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("at", ["jetsource.cli.app", "jetsource.cli.ctx"], ids=["load", "group"])
def test_ctrl_c_in_a_string_exec_is_exit_130_not_sigint(
    tmp_path: Path, at: str, as_json: bool
) -> None:
    # Python under -m ended by SIGINT (-2) after the line said exit 130: 1 in 8 Ctrl-Cs
    # while the command loaded, measured.
    run = run_m(tmp_path, at, "exec", as_json)
    assert run.returncode == 130, (run.returncode, run.stderr)
    assert said(run.stderr, as_json) == ("CANCELLED", STOPPED.format("Ctrl-C"))


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_ctrl_c_an_import_says_otherwise_is_still_ctrl_c(tmp_path: Path, as_json: bool) -> None:
    # ssl's C half imports _socket itself and says a KeyboardInterrupt there as
    # ImportError: PyCapsule_Import could not import module "_socket" (was a traceback).
    run = run_m(tmp_path, "_socket", "signal", as_json)
    assert run.returncode == 130, (run.returncode, run.stderr)
    assert said(run.stderr, as_json) == ("CANCELLED", STOPPED.format("Ctrl-C"))


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    "at",
    ["jetsource.cli", "jetsource.cli.app", "jetsource.cli.ctx"],
    ids=["entry", "load", "group"],
)
def test_a_signal_whose_interrupt_python_lost_still_stops_it(
    tmp_path: Path, at: str, how: str, as_json: bool
) -> None:
    # It was "Exception ignored in: <function _get_module_lock.<locals>.cb ...>
    # KeyboardInterrupt" (or in pydantic-core) and the command went on: one signal in
    # 100 in the first half second waited out a 30 s connect, measured.
    run = run_m(tmp_path, at, how, as_json)
    assert run.returncode == 130, (run.returncode, run.stderr)
    name = "Ctrl-C" if how == "SIGINT" else "SIGTERM"
    assert said(run.stderr, as_json) == ("CANCELLED", STOPPED.format(name))


def test_noting_signals_in_a_thread_leaves_the_process_hook() -> None:
    # 6857d42 left SIGINT alone in a thread, but the unraisable hook (the process's) was
    # still swapped there, for as long as the thread's block, whatever the main thread did.
    import threading

    from jetsource.cli import noting_signals

    hook, handler = sys.unraisablehook, signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def load() -> None:
        with noting_signals():
            import jetsource.cli.output  # noqa: F401

            seen.append(sys.unraisablehook)
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=load)
    thread.start()
    thread.join(30)
    assert seen == [hook, handler]
    assert (sys.unraisablehook, signal.getsignal(signal.SIGINT)) == (hook, handler)
