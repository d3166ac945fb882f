"""Workers of one service on one port (``publisher.workers``, ``query.workers``), as an
operator meets them:

- a port another process already holds with SO_REUSEPORT (a second pool of workers,
  another service's workers given the same port) was joined silently, the connections
  split between the two; now the supervisor refuses it (exit 2) naming the setting;
- ``workers`` above a bound was taken (100,000 processes, or a metrics hint "set the
  port to at most -9934365"); ``workers=0`` counted every CPU of the host, not those the
  process may use;
- the workers' log lines could not be told apart, and a misspelt variable was warned
  about by the supervisor and again by every worker (and every restart);
- on a signal that reached the workers too (Ctrl-C, a process group's SIGTERM) the
  supervisor logged the workers it was stopping as "restarting".
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jetsource.core import logging as jlogging
from jetsource.core import workers
from jetsource.core.runner import load_settings
from jetsource.core.settings import GrpcServerSettings
from jetsource.core.workers import MAX_WORKERS, Supervisor, serve_workers
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from jetsource.query.settings import QuerySettings

SERVICES: list[tuple[str, type[Any]]] = [("publisher", PublisherSettings), ("query", QuerySettings)]


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    yield
    jlogging._process_fields.clear()


@pytest.fixture
def supervised(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """serve_workers' calls of supervise, recorded (no process is started)."""
    counts: list[int] = []

    def record(name: str, module: str, count: int, *_: Any) -> int:
        counts.append(count)
        return 0

    monkeypatch.setattr(workers, "supervise", record)
    return counts


def held_like_a_worker() -> socket.socket:
    """A listening socket with SO_REUSEPORT, as a worker of another pool holds it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize(("name", "cls"), SERVICES)
def test_a_port_another_pool_holds_is_refused_naming_the_setting(
    name: str, cls: type[Any], supervised: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    with held_like_a_worker() as other:
        port = other.getsockname()[1]
        settings = cls(**{name: {"workers": 2, "grpc_port": port, "metrics_port": 0}})
        assert (
            serve_workers(name, f"jetsource.{name}.server", settings, getattr(settings, name)) == 2
        )
    assert supervised == []
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"cannot listen on 127.0.0.1:{port}" in said
    assert f"JETSOURCE_{name.upper()}__GRPC_PORT" in said


def test_a_health_port_another_pool_holds_is_refused_naming_the_setting(
    supervised: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    with held_like_a_worker() as other, socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        grpc_port = free.getsockname()[1]
        free.close()
        settings = PublisherSettings(
            publisher=PublisherOptions(workers=2, grpc_port=grpc_port, metrics_port=0),
            grpc=GrpcServerSettings(health_port=other.getsockname()[1]),
        )
        assert serve_workers("publisher", "m", settings, settings.publisher) == 2
    assert supervised == []
    assert "JETSOURCE_GRPC__HEALTH_PORT" in " ".join(r.getMessage() for r in caplog.records)


def test_a_workers_metrics_port_in_use_is_refused_before_any_starts(
    supervised: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Worker 1's /metrics (METRICS_PORT + 100) held: the pool used to start, worker 1
    ended it naming METRICS_PORT, whose own port was free."""
    with socket.socket() as other, socket.socket() as free:
        other.bind(("127.0.0.1", 0))
        other.listen()
        free.bind(("127.0.0.1", 0))
        grpc_port = free.getsockname()[1]
        free.close()
        metrics = other.getsockname()[1] - workers.WORKER_METRICS_STEP
        settings = PublisherSettings(
            publisher=PublisherOptions(workers=2, grpc_port=grpc_port, metrics_port=metrics)
        )
        assert serve_workers("publisher", "m", settings, settings.publisher) == 2
    assert supervised == []
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f":{metrics + workers.WORKER_METRICS_STEP}" in said
    assert "worker 1's /metrics" in said and "JETSOURCE_PUBLISHER__METRICS_PORT" in said


def test_a_free_port_is_supervised(supervised: list[int]) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    settings = PublisherSettings(
        publisher=PublisherOptions(workers=3, grpc_port=port, metrics_port=0)
    )
    assert serve_workers("publisher", "m", settings, settings.publisher) == 0
    assert supervised == [3]


def test_workers_zero_counts_the_cpus_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch, supervised: list[int]
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    settings = PublisherSettings(publisher=PublisherOptions(workers=0, grpc_port=1, metrics_port=0))
    assert serve_workers("publisher", "m", settings, settings.publisher) is None  # one process
    assert supervised == []


@pytest.mark.parametrize("workers_value", [str(MAX_WORKERS + 1), "100000"])
def test_too_many_workers_are_refused_naming_the_setting(workers_value: str) -> None:
    env = {
        **os.environ,
        "JETSOURCE_PUBLISHER__WORKERS": workers_value,
        "JETSOURCE_PUBLISHER__METRICS_PORT": "0",
        "JETSOURCE_NATS__URL": "nats://127.0.0.1:1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "jetsource.publisher.server"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    err = run.stderr.decode()
    assert run.returncode == 2, err
    assert "JETSOURCE_PUBLISHER__WORKERS" in err and str(MAX_WORKERS) in err
    assert "Traceback" not in err and "started (pid" not in err


def test_a_workers_lines_say_which_worker_and_settings_warnings_are_the_supervisors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JETSOURCE_LOG_JSON", "true")
    monkeypatch.setenv("JETSOURCE_PUBLISHER__WORKRS", "3")  # misspelt
    load_settings("publisher", PublisherSettings)  # the supervisor: warns
    assert "JETSOURCE_PUBLISHER__WORKRS" in capsys.readouterr().err

    monkeypatch.setenv("JETSOURCE_PUBLISHER__WORKER_INDEX", "1")  # worker_env's
    load_settings("publisher", PublisherSettings)  # a worker: its supervisor warned
    logging.getLogger("jetsource.publisher").info("publisher listening")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == ["publisher listening"]
    assert lines[0]["worker"] == 1


def test_workers_ending_with_the_supervisors_signal_are_not_restarted_or_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C reaches the whole process group: the workers end as the supervisor's
    handler runs, within one of its polls."""
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = Supervisor("svc", command, 2, lambda i: dict(os.environ), 1.0)
    real_sleep = time.sleep

    def sleep_through_a_group_signal(seconds: float) -> None:
        real_sleep(seconds)
        if supervisor.workers and all(w.proc is not None for w in supervisor.workers):
            for w in supervisor.workers:
                assert w.proc is not None
                w.proc.send_signal(signal.SIGTERM)
                w.proc.wait(10)
            supervisor._stop(signal.SIGINT, None)

    monkeypatch.setattr(time, "sleep", sleep_through_a_group_signal)
    with caplog.at_level(logging.INFO, "jetsource.workers"):
        assert supervisor.run() == 0
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "restarting" in m], said
    assert all(w.restarts == 0 for w in supervisor.workers)


def test_a_worker_whose_supervisor_died_before_it_was_armed_ends_at_once() -> None:
    """The parent-death signal is armed in the child after the fork: a supervisor
    killed in between left that worker running for ever, orphaned, holding the port."""
    not_its_parent = os.getpid() + 1 if os.getppid() != os.getpid() + 1 else os.getpid() + 2
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        preexec_fn=workers._end_with_parent(not_its_parent),
    )
    try:
        assert child.wait(10) == 1
    finally:
        child.kill()
        child.wait()


def test_a_signal_while_the_workers_start_starts_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = Supervisor("svc", command, 3, lambda i: dict(os.environ), 1.0)
    start = supervisor._start

    def start_then_signal(w: workers.Worker) -> None:
        start(w)
        supervisor._stop(signal.SIGTERM, None)  # came while the first was starting

    monkeypatch.setattr(supervisor, "_start", start_then_signal)
    assert supervisor.run() == 0
    assert [w.proc is not None for w in supervisor.workers] == [True, False, False]


@pytest.mark.parametrize("index", ["²", str(MAX_WORKERS), "1000", "5_0", "+5"])
def test_a_worker_index_no_supervisor_gives_is_refused_naming_the_setting(index: str) -> None:
    """WORKER_INDEX is the supervisor's (0 to MAX_WORKERS - 1). A digit int() does not
    take ("²") ended the process in a ValueError traceback; 1000 was taken as worker
    1000 (its lines tagged so, its misspelt settings left unwarned)."""
    env = {**os.environ, "JETSOURCE_PUBLISHER__WORKER_INDEX": index}
    script = (
        "from jetsource.core.runner import load_settings\n"
        "from jetsource.publisher.settings import PublisherSettings\n"
        "load_settings('publisher', PublisherSettings)\n"
        "print('loaded')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "JETSOURCE_PUBLISHER__WORKER_INDEX" in run.stderr
    assert "Traceback" not in run.stderr and "loaded" not in run.stdout


@pytest.mark.parametrize("text", ["+5", " 5", "5 ", "5.0", "-0", "5_0", "-1", "", "0x5", "²"])
def test_the_settings_take_as_worker_index_exactly_what_the_runner_takes(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner and the settings read WORKER_INDEX alike: the field took "+5", " 5",
    "5.0", "-0" and "5_0" (as 50) where the runner said "not a worker", so a process was
    worker 50 to its settings and no worker to its logs."""
    from pydantic import ValidationError

    from jetsource.core.runner import _worker_index
    from jetsource.core.workers import WorkerFields

    monkeypatch.setenv("JETSOURCE_PUBLISHER__WORKER_INDEX", text)
    assert _worker_index("publisher") is None
    with pytest.raises(ValidationError, match="worker_index"):
        WorkerFields.model_validate({"worker_index": text})


@pytest.mark.parametrize("text", ["0", "5", "007", str(MAX_WORKERS - 1)])
def test_an_index_the_supervisor_gives_is_the_same_to_runner_and_settings(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jetsource.core.runner import _worker_index
    from jetsource.core.workers import WorkerFields

    monkeypatch.setenv("JETSOURCE_PUBLISHER__WORKER_INDEX", text)
    assert _worker_index("publisher") == int(text)
    assert WorkerFields.model_validate({"worker_index": text}).worker_index == int(text)
    assert WorkerFields(worker_index=-1).worker_index == -1  # the default, in code
