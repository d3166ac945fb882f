"""The four services as processes and the real `jetsource` command pointed at them,
for the CLI and README walkthrough tests."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jetsource.core.settings import JetsourceSettings
from tests.cli_env import clean_environ
from tests.projector_fixtures import projector_settings
from tests.stack import Services

# The console script installed beside this interpreter (the venv's `jetsource`).
JETSOURCE = str(Path(sys.executable).parent / "jetsource")


@dataclass
class CliStack:
    services: Services
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``jetsource ARGS`` as a user runs it, stdout and stderr piped (not a terminal)."""
        return subprocess.run(
            [JETSOURCE, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def wait_for(self, *args: str, until: str, attempts: int = 100) -> str:
        """Run until stdout contains ``until`` (the read models follow asynchronously)."""
        last = None
        for _ in range(attempts):
            last = self.run(*args)
            if last.returncode == 0 and until in last.stdout:
                return last.stdout
            time.sleep(0.1)
        raise AssertionError(f"{args}: never showed {until!r}: {last}")


def client_env(publisher: str, query: str) -> dict[str, str]:
    """The caller's environment without any JETSOURCE_* setting, plus the CLI's targets."""
    env = clean_environ()
    env.pop("COLUMNS", None)
    env.update(JETSOURCE_CLIENT__PUBLISHER=publisher, JETSOURCE_CLIENT__QUERY=query)
    return env


def isolated_services(settings: JetsourceSettings, home: Path) -> Services:
    """The four services as processes (not started), on a stream, models and names
    of their own, so a module's stack shares the session's servers safely."""
    base = projector_settings(settings, uuid.uuid4().hex[:10])
    shared = JetsourceSettings(
        nats=base.nats,
        valkey=base.valkey,
        graph=base.graph,
        eventstore=base.eventstore,
        snapshots=base.snapshots,
    )
    names = ("dlq_stream", "dlq_subject_prefix", "control_bucket", "valkey_prefix")
    projector = {k: getattr(base.projector, k) for k in (*names, "graph_label_prefix")}
    return Services.configure(
        home, shared, options={"projector": projector, "snapshotter": projector, "query": {}}
    )


@pytest.fixture(scope="module")
def cli_stack(
    settings: JetsourceSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CliStack]:
    """A fresh stack: publisher, projector, snapshotter and query service as processes,
    on a stream, models and names of their own."""
    services = isolated_services(settings, tmp_path_factory.mktemp("cli-stack"))
    try:
        services.start_all()
        yield CliStack(
            services, client_env(services.address("publisher"), services.address("query"))
        )
    finally:
        services.stop_all()
