"""`jetsource down` stops the services all at once: each gets SIGTERM before any has
finished its graceful stop (a projector's stop waits for its pull to run out, up to
5 s; one after another the stops added up), and a process that ignores SIGTERM is
killed after the timeout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jetsource.core.procs import pid_alive
from jetsource.devstack.servers import stop_pids

SLOW_STOP = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def stop(*_):
    out.write_text(f"{time.monotonic()}\\n")
    time.sleep(0.6)
    with out.open("a") as f:
        f.write(f"{time.monotonic()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
out.with_suffix(".ready").write_text("")
while True:
    time.sleep(0.05)
"""


def _start(tmp: Path, name: str, script: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp / f"{name}.txt")])
    while not (tmp / f"{name}.ready").exists():
        assert proc.poll() is None
    return proc


def test_every_service_gets_sigterm_before_any_has_stopped(tmp_path: Path) -> None:
    procs = [_start(tmp_path, f"s{k}", SLOW_STOP) for k in range(3)]
    assert stop_pids([p.pid for p in procs]) == []
    for p in procs:
        p.wait(5)
    times = [(tmp_path / f"s{k}.txt").read_text().split() for k in range(3)]
    termed, ended = [float(t[0]) for t in times], [float(t[1]) for t in times]
    assert max(termed) < min(ended), (termed, ended)


def test_one_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    stubborn = SLOW_STOP.replace(
        "signal.signal(signal.SIGTERM, stop)", "signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    )
    proc = _start(tmp_path, "s", stubborn)
    assert stop_pids([proc.pid], timeout=0.5) == []
    proc.wait(5)
    assert not pid_alive(proc.pid)
