"""yamllint on the plain YAML of the deployment (compose, Chart.yaml, values files, the
Prometheus and Grafana provisioning files and alert rules); the
chart's templates are Go templates and are checked by rendering them instead."""

from __future__ import annotations

import subprocess
import sys

from tests.deploy.chart import CHART, COMPOSE, ROOT

FILES = [
    COMPOSE,
    CHART / "Chart.yaml",
    CHART / "values.yaml",
    CHART / "values-production.yaml",
    CHART / "files" / "prometheus" / "alerts.yml",
    *sorted((ROOT / "deploy" / "prometheus").glob("*.yml")),
    *sorted((ROOT / "deploy" / "grafana" / "provisioning").rglob("*.yml")),
]


def test_plain_yaml_passes_yamllint() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-c",
            str(ROOT / "deploy" / "yamllint.yaml"),
            *map(str, FILES),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
