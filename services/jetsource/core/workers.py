"""Several processes of one service on one port: a supervisor for ``workers > 1``.

Python runs one core per process; a service whose work is CPU in its own process (the
publisher: gRPC, decide, encode) uses more cores as more processes. The workers share
the gRPC port through SO_REUSEPORT (the kernel spreads new connections over them) and
need nothing else in common: each keeps its own caches, and optimistic concurrency on
the event stream makes their appends safe (a stale cache conflicts, reloads, retries;
an idempotency key is found in the stream by whichever worker sees the retry).

The supervisor starts the workers, restarts one that ends on its own (after a backoff
that grows while it keeps failing), stops them all on SIGTERM/SIGINT within their
grace plus a margin (then SIGKILL), and ends with exit code 2 at once when a worker
says it cannot start (exit 2: credentials refused, address not usable), since a
restart cannot help there. When every worker is down and each has ended
``CRASH_LOOP_FAILURES`` times in a row without staying up ``HEALTHY_AFTER_S``, it ends
with exit 1: a supervisor restarting them for ever looked alive to its orchestrator
(the pod Running, never in CrashLoopBackOff) while nothing served.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

from pydantic import BaseModel, Field, field_validator

from jetsource.core.errors import ListenError
from jetsource.core.logging import setup_logging
from jetsource.core.runner import EXIT_ACCESS_DENIED
from jetsource.core.settings import MAX_PORT, JetsourceSettings

log = logging.getLogger("jetsource.workers")

STOP_MARGIN_S = 5.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0  # a worker up this long resets its backoff
CRASH_LOOP_FAILURES = 5  # every worker down, each ended this often in a row: exit 1
POLL_S = 0.2
EXIT_CRASH_LOOP = 1
MAX_WORKERS = 256  # workers=N above it is refused; workers=0 takes at most this many


def _end_with_parent(parent: int) -> Callable[[], None]:
    """In the worker, before it runs: SIGTERM when the supervisor dies, even by
    SIGKILL, so no worker keeps the port after it (Linux; elsewhere nothing). A
    supervisor that died between the fork and this (no signal will come) ends the
    worker at once: one started as its supervisor was killed kept running, orphaned."""

    def arm() -> None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:
            os._exit(1)

    return arm


PR_SET_PDEATHSIG = 1


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = field(default_factory=lambda: BACKOFF_FIRST_S)
    restart_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # ends in a row, none after a healthy run


@dataclass
class Supervisor:
    """``command`` runs one worker; ``env_for(i)`` is worker i's environment."""

    name: str
    command: list[str]
    count: int
    env_for: Callable[[int], Mapping[str, str]]
    grace_s: float
    workers: list[Worker] = field(default_factory=list)
    _stopping: bool = False

    def _start(self, w: Worker) -> None:
        w.proc = subprocess.Popen(
            self.command, env={**self.env_for(w.index)}, preexec_fn=_end_with_parent(os.getpid())
        )
        w.started = time.monotonic()
        log.info("%s worker %d started (pid %d)", self.name, w.index, w.proc.pid)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self.workers = [Worker(i) for i in range(self.count)]
        for w in self.workers:
            if self._stopping:  # stopped while starting them: start no more
                break
            self._start(w)
        log.info(
            "%s: %d workers sharing one port (pid %d supervises)",
            self.name,
            self.count,
            os.getpid(),
        )
        code = 0
        while not self._stopping:
            time.sleep(POLL_S)
            now = time.monotonic()
            for w in self.workers:
                if self._stopping:
                    # SIGTERM/SIGINT came during the sleep; a worker that ended meanwhile
                    # got it too (Ctrl-C, a group's signal): not one to restart or report.
                    break
                if w.proc is None:
                    if now >= w.restart_at and not self._stopping:
                        w.restarts += 1
                        self._start(w)
                    continue
                ended = w.proc.poll()
                if ended is None:
                    if now - w.started >= HEALTHY_AFTER_S:
                        w.backoff = BACKOFF_FIRST_S
                        w.failures = 0
                    continue
                if ended == EXIT_ACCESS_DENIED:
                    log.error(
                        "%s worker %d cannot start (exit %d): stopping every worker",
                        self.name,
                        w.index,
                        ended,
                    )
                    w.proc = None
                    self._stopping = True
                    code = EXIT_ACCESS_DENIED
                    break
                log.warning(
                    "%s worker %d (pid %d) %s; restarting in %.1f s",
                    self.name,
                    w.index,
                    w.proc.pid,
                    _how_ended(ended),
                    w.backoff,
                )
                w.proc = None
                w.failures = 0 if now - w.started >= HEALTHY_AFTER_S else w.failures + 1
                w.restart_at = now + w.backoff
                w.backoff = min(w.backoff * 2, BACKOFF_MAX_S)
            if not self._stopping and self._crash_looping():
                log.error(
                    "%s: every worker ended %d times in a row without staying up %.0f s: "
                    "stopping (exit %d) so whatever restarts this service sees it fail; "
                    "the workers' own log lines say why",
                    self.name,
                    CRASH_LOOP_FAILURES,
                    HEALTHY_AFTER_S,
                    EXIT_CRASH_LOOP,
                )
                code = EXIT_CRASH_LOOP
                break
        self.stop_all()
        return code

    def _crash_looping(self) -> bool:
        return all(w.proc is None and w.failures >= CRASH_LOOP_FAILURES for w in self.workers)

    def stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + STOP_MARGIN_S
        for p in running:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s worker pid %d did not stop in time: killed", self.name, p.pid)
                p.kill()
                p.wait()
        log.info("%s: every worker stopped", self.name)


def _how_ended(code: int) -> str:
    """'ended with 1', or for a signal 'was killed by SIGKILL' (Popen's -9)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"ended with {code}"


def supervise(
    name: str,
    module: str,
    count: int,
    env_for: Callable[[int], Mapping[str, str]],
    grace_s: float,
) -> int:
    """Run ``count`` workers of ``python -m module``; returns the exit code."""
    return Supervisor(name, [sys.executable, "-m", module], count, env_for, grace_s).run()


WORKER_METRICS_STEP = 100  # worker i: metrics_port + 100 * i (9101, 9201, ...)


def worker_env(prefix: str, grpc_port: int, metrics_port: int, index: int) -> dict[str, str]:
    """Worker ``index``'s environment (``prefix``: the service's settings prefix, e.g.
    ``JETSOURCE_PUBLISHER__``): one process, the shared port, its own metrics port
    (``metrics_port + 100 * index``, clear of the other services' defaults; none when
    metrics are off), its index (the ``worker`` field of its log lines)."""
    return {
        **os.environ,
        f"{prefix}WORKERS": "1",
        f"{prefix}PORT_SHARED": "true",
        f"{prefix}WORKER_INDEX": str(index),
        f"{prefix}GRPC_PORT": str(grpc_port),
        f"{prefix}METRICS_PORT": str(
            metrics_port + WORKER_METRICS_STEP * index if metrics_port else 0
        ),
    }


def serve_workers(
    name: str, module: str, settings: JetsourceSettings, options: WorkerOptions
) -> int | None:
    """A service's ``main`` with ``options.workers``: None when it asks for one process
    (the caller runs the service itself); otherwise supervise that many workers of
    ``python -m module`` on its gRPC port and return the exit code."""
    workers = options.workers or min(usable_cpus(), MAX_WORKERS)
    if workers <= 1:
        return None
    setup_logging(name, settings.log_level, json=settings.log_json)
    prefix = f"JETSOURCE_{name.upper()}__"
    if options.grpc_port == 0:
        log.error(
            "%s cannot start: %s.workers=%d needs a fixed %s.grpc_port (%sGRPC_PORT; "
            "0 would give each worker its own port)",
            name,
            name,
            workers,
            name,
            prefix,
        )
        return EXIT_ACCESS_DENIED
    last = options.metrics_port + WORKER_METRICS_STEP * (workers - 1)
    if options.metrics_port and last > MAX_PORT:
        # Else the last worker refused its own environment's port, one the operator
        # never set ("JETSOURCE_PUBLISHER__METRICS_PORT='65600'"), after the others began.
        log.error(
            "%s cannot start: %s.workers=%d puts worker %d's /metrics on %d, above %d: "
            "set %sMETRICS_PORT to at most %d (or 0: no /metrics)",
            name,
            name,
            workers,
            workers - 1,
            last,
            MAX_PORT,
            prefix,
            MAX_PORT - WORKER_METRICS_STEP * (workers - 1),
        )
        return EXIT_ACCESS_DENIED
    # Every port the workers need, before any starts. SO_REUSEPORT lets any process of
    # this user that asks for it join the gRPC and health ports: another pool of workers
    # (a second supervisor, another service's workers given the same port) bound them
    # silently and took part of the connections. A worker's metrics port in use ended
    # the pool after the others began, naming a setting whose own port was free.
    needed = [
        (options.grpc_port, f"{prefix}GRPC_PORT", ""),
        (settings.grpc.health_port, "JETSOURCE_GRPC__HEALTH_PORT", ""),
    ]
    if options.metrics_port:
        needed += [
            (
                options.metrics_port + WORKER_METRICS_STEP * i,
                f"{prefix}METRICS_PORT",
                f" (worker {i}'s /metrics: {prefix}METRICS_PORT + {WORKER_METRICS_STEP} * {i})",
            )
            for i in range(workers)
        ]
    for port, setting, whose in needed:
        if port and in_use(options.grpc_host, port):
            log.error(
                "%s cannot start: %s",
                name,
                ListenError(
                    f"{name} workers",
                    f"{options.grpc_host}:{port}",
                    f"the address{whose} is in use by another process (workers share "
                    "their gRPC port only with each other)",
                    setting,
                ),
            )
            return EXIT_ACCESS_DENIED
    return supervise(
        name,
        module,
        workers,
        lambda i: worker_env(prefix, options.grpc_port, options.metrics_port, i),
        options.shutdown_grace_s,
    )


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: taskset, a container's cpuset),
    not every CPU of the host."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def in_use(host: str, port: int) -> bool:
    """Whether another socket holds ``host:port`` (tried by binding it without
    SO_REUSEPORT, as grpc's own bind does; an address that cannot be bound for another
    reason is left for the workers to report)."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return False
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
    return False


class WorkerFields(BaseModel):
    """The options of a service that can run as several workers on one port."""

    workers: int = Field(
        default=1,
        ge=0,
        le=MAX_WORKERS,
        description="processes serving grpc_port together (SO_REUSEPORT): one core each; "
        f"0 = one per CPU this process may use (at most {MAX_WORKERS}). Worker i serves "
        "/metrics on metrics_port + 100 * i",
    )
    # Set by the supervisor for its workers (they share their port on purpose), not by
    # hand. worker_index is read by jetsource.core.runner (the ``worker`` field of its log
    # lines; a worker leaves the settings warnings to its supervisor) from the variable
    # itself, before the settings load: validated here so that what the runner does not
    # take as an index (past the workers a supervisor starts, not a number) is refused.
    port_shared: bool = False
    worker_index: int = Field(
        default=-1,
        ge=-1,
        lt=MAX_WORKERS,
        description="set by the supervisor: this worker's index (-1: not a supervised worker)",
    )

    @field_validator("worker_index", mode="before")
    @classmethod
    def _as_the_runner_reads_it(cls, value: object) -> object:
        # The variable's text is read by the runner (supervised_index) before the
        # settings load: what it does not take as an index ("+5", " 5", "5.0", "-0",
        # "5_0", which int() read as 50) is refused here, not taken as another worker.
        if isinstance(value, str) and supervised_index(value) is None:
            raise ValueError(
                f"not an index the supervisor gives: 0 to {MAX_WORKERS - 1} in ASCII digits"
            )
        return value


def supervised_index(text: str) -> int | None:
    """The worker index in ``text`` (JETSOURCE_<SVC>__WORKER_INDEX, as :func:`worker_env`
    writes it: 0 to MAX_WORKERS - 1 in ASCII digits, nothing else), else None. The one
    reading of the variable: the runner's and the settings' (which refuse the rest)."""
    if not (text.isascii() and text.isdigit()) or int(text) >= MAX_WORKERS:
        return None
    return int(text)


class WorkerOptions(Protocol):
    """What :func:`serve_workers` reads of a service's options."""

    workers: int
    grpc_host: str
    grpc_port: int
    metrics_port: int
    shutdown_grace_s: float
