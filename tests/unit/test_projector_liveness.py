"""/livez of the projector and the snapshotter (the Helm chart's liveness probe) is 503
only for what a restart cures: a stuck event loop, or a model stalled while NATS is
connected and its store neither refuses its writes nor is out of reach. A dependency
away fails /healthz (readiness) only: restarting the pod would not bring it back."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from jetsource.projection import host
from jetsource.projection.host import HealthServer, ProjectorService


def worker(*, stalled: bool = False, refusing: bool = False) -> Any:
    spec = SimpleNamespace(name="context", version=1)
    return SimpleNamespace(spec=spec, stalled=stalled, refusing=refusing)


def service(*workers: Any, connected: bool = True, unreachable: Any = None) -> Any:
    s: Any = ProjectorService.__new__(ProjectorService)
    s.stopping = False
    s.projection = SimpleNamespace(nc=SimpleNamespace(is_connected=connected))
    s.unreachable = unreachable or {}
    s.workers = {("context", i): (w, None) for i, w in enumerate(workers)}
    return s


@pytest.mark.parametrize(
    ("svc", "dead"),
    [
        (service(worker()), False),
        (service(worker(stalled=True)), True),  # the livelock a restart cures
        (service(worker(stalled=True, refusing=True)), False),  # Valkey OOM, READONLY
        (service(worker(stalled=True), connected=False), False),  # NATS away
        (service(worker(stalled=True), unreachable={"valkey": "refused"}), False),
    ],
)
def test_liveness_fails_only_for_what_a_restart_cures(svc: Any, dead: bool) -> None:
    problems = ProjectorService.liveness_problems(svc)
    assert bool(problems) is dead, problems
    if dead:
        assert problems == ["context v1 stalled"]


def test_livez_fails_on_a_stuck_loop_and_names_a_stalled_model() -> None:
    health: Any = HealthServer.__new__(HealthServer)
    health.service = service(worker(stalled=True))
    health.heartbeat = time.monotonic()
    assert health.alive() == (False, "context v1 stalled")
    health.service = service(worker(stalled=True, refusing=True))
    assert health.alive() == (True, "")
    health.heartbeat = time.monotonic() - host.LOOP_STALL_S - 1
    ok, why = health.alive()
    assert not ok and "event loop has not run" in why
