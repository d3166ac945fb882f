"""Metrics of #18: build info, NATS connection state, append-to-visible freshness and
dead-letter depth per model, and each service exporting only its own metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY

from jetsource import __version__
from jetsource.core import metrics
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.projection.contract import Kind, ModelSpec, Outcome
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorOptions
from tests.deploy.exported_metrics import families


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# -- each service exports its own ----------------------------------------------------

OWN_PREFIXES = {
    "publisher": ("jetsource_publisher_",),
    "projector": ("jetsource_projector_",),
    "snapshotter": ("jetsource_projector_", "jetsource_snapshots_"),
    "query": ("jetsource_query_",),
}
SHARED = {"jetsource_build_info", "jetsource_nats_connected"}


@pytest.mark.parametrize("service", sorted(OWN_PREFIXES))
def test_service_exports_only_its_own_metrics(service: str) -> None:
    exported = set(families(service))
    foreign = {n for n in exported - SHARED if not n.startswith(OWN_PREFIXES[service])}
    assert not foreign, f"{service} exports metrics that are not its own: {sorted(foreign)}"
    assert any(n.startswith(OWN_PREFIXES[service]) for n in exported)


def test_query_service_exports_no_snapshot_metrics() -> None:
    """It did: projector.bootstrap imports snapshotter.model, which registered its
    counters at import time."""
    assert not {n for n in families("query") if n.startswith("jetsource_snapshots_")}
    assert {"jetsource_snapshots_written", "jetsource_snapshots_too_large"} <= set(
        families("snapshotter")
    )


def test_new_metrics_are_exported() -> None:
    projector = families("projector")
    assert projector["jetsource_projector_freshness_seconds"] == "histogram"
    assert projector["jetsource_projector_dead_letters_pending"] == "gauge"
    query = families("query")
    assert query["jetsource_build_info"] == "gauge"
    assert query["jetsource_nats_connected"] == "gauge"


# -- build info and NATS connection state ----------------------------------------------


def test_build_info() -> None:
    metrics.register_service("unit-build")
    assert value("jetsource_build_info", version=__version__, service="unit-build") == 1


class FakeNats:
    """The attributes of nats-py's client that watch_nats uses."""

    def __init__(self) -> None:
        self.is_connected = True
        self.calls: list[str] = []

        async def closed() -> None:
            self.calls.append("closed")

        self._disconnected_cb: Any = None
        self._reconnected_cb: Any = None
        self._closed_cb: Any = closed


async def test_nats_connected_follows_callbacks_and_keeps_the_clients_own() -> None:
    nc = FakeNats()
    task = metrics.watch_nats(nc, "unit-cb", poll_s=3600)
    try:
        assert value("jetsource_nats_connected", service="unit-cb") == 1
        nc.is_connected = False
        await nc._disconnected_cb()
        assert value("jetsource_nats_connected", service="unit-cb") == 0
        nc.is_connected = True
        await nc._reconnected_cb()
        assert value("jetsource_nats_connected", service="unit-cb") == 1
        await nc._closed_cb()
        assert value("jetsource_nats_connected", service="unit-cb") == 0
        assert nc.calls == ["closed"]  # the client's own callback still runs
    finally:
        task.cancel()


async def test_nats_connected_is_polled_without_callbacks() -> None:
    class Bare:
        is_connected = True

    nc = Bare()
    task = metrics.watch_nats(nc, "unit-poll", poll_s=0.01)
    try:
        assert value("jetsource_nats_connected", service="unit-poll") == 1
        nc.is_connected = False
        for _ in range(100):
            await asyncio.sleep(0.01)
            if value("jetsource_nats_connected", service="unit-poll") == 0:
                break
        assert value("jetsource_nats_connected", service="unit-poll") == 0
    finally:
        task.cancel()


# -- freshness and dead-letter depth in the projector runtime ------------------------------


@dataclass
class FakeStore:
    settings: EventStoreSettings = field(default_factory=EventStoreSettings)


@dataclass
class FakeDeadLetters:
    letters: list[Any] = field(default_factory=list)
    stored: int = 0

    async def list(self, spec: ModelSpec) -> list[Any]:
        return self.letters

    async def count(self, spec: ModelSpec) -> int:
        return self.stored


def worker(name: str, dlq: FakeDeadLetters) -> Worker:
    spec = ModelSpec(name, 3, Kind.SNAPSHOT, "valkey", "unit")
    model: Any = type("M", (), {"spec": spec})()
    nc: Any = type("Nc", (), {"new_inbox": staticmethod(lambda: "_INBOX.unit")})()
    return Worker(nc, FakeStore(), model, dlq, ProjectorOptions())  # type: ignore[arg-type]


def recorded(seq: int, age_s: float) -> RecordedEvent:
    return RecordedEvent(
        envelope=None,  # type: ignore[arg-type]
        event=None,  # type: ignore[arg-type]
        stream_seq=seq,
        recorded_at_ns=time.time_ns() - int(age_s * 1e9),
    )


def test_freshness_observed_for_events_the_model_took() -> None:
    w = worker("unit-fresh", FakeDeadLetters())
    records = [recorded(1, 2.0), recorded(2, 0.001), recorded(3, 100.0)]
    w._observe_freshness(records, Outcome(done=[1, 2], waiting={3: "behind"}, applied=2))
    labels = {"model": "unit-fresh", "version": "3"}
    assert value("jetsource_projector_freshness_seconds_count", **labels) == 2
    total = value("jetsource_projector_freshness_seconds_sum", **labels)
    assert total is not None and 2.0 <= total < 3.0  # not the waiting one (100 s)
    assert value("jetsource_projector_freshness_seconds_bucket", le="1.0", **labels) == 1
    assert value("jetsource_projector_freshness_seconds_bucket", le="2.5", **labels) == 2


async def test_dead_letter_depth_from_the_dlq_then_recounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    letter = type("L", (), {"aggregate_id": "story-1", "original_seq": 7, "original_subject": ""})()
    dlq = FakeDeadLetters(letters=[letter, letter])
    w = worker("unit-dlq", dlq)

    async def setup() -> None:
        return None

    async def ensure_consumer(from_seq: int | None = None) -> None:
        return None

    monkeypatch.setattr(w.model, "setup", setup, raising=False)  # the fake model has none
    monkeypatch.setattr(w, "ensure_consumer", ensure_consumer)
    await w.start()
    labels = {"model": "unit-dlq", "version": "3"}
    assert value("jetsource_projector_dead_letters_pending", **labels) == 2
    dlq.stored = 0  # retried elsewhere
    await w._recount_dead_letters()
    assert value("jetsource_projector_dead_letters_pending", **labels) == 0


def test_metrics_port_answers_healthz_itself_not_with_the_metrics_page() -> None:
    """#18: /healthz on the publisher's and query service's metrics ports returned the
    metrics page; it answers the service's health now, and /metrics stays."""
    import urllib.error
    import urllib.request

    from jetsource.core.metrics import start_metrics_server
    from jetsource.devstack.servers import free_port

    state = {"ok": True}
    port = free_port()
    server = start_metrics_server(port, "127.0.0.1", lambda: state["ok"])
    try:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
            assert answer.status == 200 and answer.read() == b"ok\n"
        state["ok"] = False
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            assert b"jetsource_build_info" in answer.read()
    finally:
        server.shutdown()


def test_build_info_reports_the_installed_version_as_the_cli_does(tmp_path: Any) -> None:
    """build_info's version is the installed distribution's (pyproject's), the one
    ``jetsource --version`` prints: a release whose metadata says 7.7.7 reports 7.7.7,
    not a number written a second time in the source."""
    import os
    import subprocess
    import sys

    dist = tmp_path / "jetsource-7.7.7.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jetsource\nVersion: 7.7.7\n")
    script = (
        "from prometheus_client import REGISTRY\n"
        "from typer.testing import CliRunner\n"
        "from jetsource.core import metrics\n"
        "from jetsource.cli.app import app\n"
        "metrics.register_service('unit-version')\n"
        "print(REGISTRY.get_sample_value('jetsource_build_info',"
        " {'version': '7.7.7', 'service': 'unit-version'}))\n"
        "print(CliRunner().invoke(app, ['--version']).output.strip())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["1.0", "jetsource 7.7.7"]
