"""The workers' supervisor ends with exit 1 when every worker crash-loops: it used to
restart them for ever, so its orchestrator saw a live process (a Running pod, never
CrashLoopBackOff) while nothing served. One worker that stays up keeps it going."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from jetsource.core import workers
from jetsource.core.workers import CRASH_LOOP_FAILURES, EXIT_CRASH_LOOP, Supervisor

CRASH_OR_SLEEP = [
    sys.executable,
    "-c",
    "import os, sys, time\nif os.environ.get('CRASH'): sys.exit(1)\ntime.sleep(60)",
]


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "BACKOFF_FIRST_S", 0.01)
    monkeypatch.setattr(workers, "BACKOFF_MAX_S", 0.02)
    monkeypatch.setattr(workers, "POLL_S", 0.02)


def test_every_worker_crash_looping_ends_the_supervisor_with_exit_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor("svc", CRASH_OR_SLEEP, 2, lambda i: {"CRASH": "1"}, 1.0)
    started = time.monotonic()
    assert supervisor.run() == EXIT_CRASH_LOOP
    assert time.monotonic() - started < 30
    assert all(w.failures >= CRASH_LOOP_FAILURES for w in supervisor.workers)
    assert any("every worker ended" in r.getMessage() for r in caplog.records)


def test_a_worker_that_stays_up_keeps_the_supervisor_running() -> None:
    supervisor = Supervisor("svc", CRASH_OR_SLEEP, 2, lambda i: {"CRASH": "1"} if i else {}, 1.0)

    def stop_when_looped() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if supervisor.workers and supervisor.workers[1].failures > CRASH_LOOP_FAILURES:
                break
            time.sleep(0.02)
        supervisor._stopping = True

    threading.Thread(target=stop_when_looped, daemon=True).start()
    assert supervisor.run() == 0  # stopped by the test, not by the crash loop
    assert supervisor.workers[1].failures > CRASH_LOOP_FAILURES
