"""The deployment's documents say what it runs. helm/jetsource/README.md: every kind and
component of a render with every option on is in its table, every alert of the rules in
its alert table, and no sentence says scale-out is missing (it said "four processes" and
"partitioning ... is not built yet" while the chart ran seven and took partitions). The
Dockerfile names every process and exposes every port; compose and its Prometheus count
the services compose runs (both said four of seven)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.deploy.chart import (
    CHART,
    COMPOSE,
    DOCKERFILE,
    ROOT,
    SCRIPTS,
    interpolate,
    manifests,
    render,
)

README = (CHART / "README.md").read_text()
EVERYTHING = {
    "admin": {"enabled": True},
    "sessionsPruner": {"enabled": True},
    "archiver": {"enabled": True},
    "config": {"env": {"JETSOURCE_ARCHIVE__URL": "s3://archive/jetsource"}},
    "ingest": {"ingress": {"enabled": True}},
    "projector": {"partitions": 2, "replicas": 2, "keda": {"enabled": True}},
    "snapshotter": {"partitions": 2, "replicas": 2, "keda": {"enabled": True}},
    "metrics": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}},
}
APIS = ("monitoring.coreos.com/v1", "keda.sh/v1alpha1")
WORDS = {4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def table_rows() -> dict[str, str]:
    """The "What it renders" table: its first cell -> the row."""
    section = README.split("## What it renders", 1)[1].split("\n## ", 1)[0]
    return {
        line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")
    }


def test_every_rendered_kind_and_component_is_in_the_table() -> None:
    rows = table_rows()
    missing = []
    for doc in manifests(render(EVERYTHING, APIS)):
        kind = doc["kind"]
        component = doc["metadata"]["labels"].get("app.kubernetes.io/component")
        cells = [cell for cell in rows if cell.split()[0] == kind]
        if not cells:
            missing.append(f"{kind}: no row")
        elif kind in ("Deployment", "CronJob", "ScaledObject", "Ingress") and not any(
            f"`{component}`" in cell for cell in cells
        ):
            missing.append(f"{kind} {component}: not named in a row")
    assert sorted(set(missing)) == []


def test_every_alert_is_in_the_alert_table() -> None:
    rules = yaml.safe_load((CHART / "files" / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    listed = set(re.findall(r"^\| `(Jetsource\w+)` \|", README, re.MULTILINE))
    assert alerts == listed


def test_the_page_counts_what_the_chart_runs() -> None:
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in manifests(render())
        if d["kind"] == "Deployment"
    }
    assert f"Deploys jetsource's {WORDS[len(deployments)]} processes" in README
    assert "not built yet" not in README


def compose_services() -> dict[str, Any]:
    """docker-compose.yml's long-running jetsource services (not the one-shot jobs)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("jetsource:") and service.get("restart") != "no"
    }


def test_the_dockerfile_names_every_process_and_exposes_its_ports() -> None:
    text = DOCKERFILE.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for script in SCRIPTS:
        assert re.search(rf"#\s+{re.escape(script)}\s", header), f"{script}: not in the header"
    (expose,) = re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE)
    exposed = {int(p) for p in expose.split()}
    for name, service in compose_services().items():
        for mapping in service.get("ports", []):
            port = int(interpolate(mapping).rsplit(":", 1)[1])
            assert port in exposed, f"{name}: port {port} is not in EXPOSE"


def test_compose_and_prometheus_count_the_services_compose_runs() -> None:
    count = WORDS[len(compose_services())]
    assert f"Neo4j 5 and the {count} services" in COMPOSE.read_text()
    prometheus = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert f"scrapes the {count} services' metrics" in prometheus
    jobs = yaml.safe_load(prometheus)["scrape_configs"]
    assert len([j for j in jobs if j["job_name"].startswith("jetsource-")]) == len(
        compose_services()
    )


def test_the_notes_name_the_ingest_and_say_how_the_workers_run() -> None:
    notes = render()["jetsource/templates/NOTES.txt"]
    assert "js-jetsource-ingest.ctx.svc:8088/webhooks/" in notes
    assert "run one replica each" in notes
    off = render({"ingest": {"enabled": False}})["jetsource/templates/NOTES.txt"]
    assert "js-jetsource-ingest" not in off
    partitioned = render({"projector": {"partitions": 2, "replicas": 2}})
    notes = partitioned["jetsource/templates/NOTES.txt"]
    assert "share their partitions through leases" in notes
    assert "one replica each" not in notes


def test_the_readme_says_the_image_has_no_tracing_extra() -> None:
    # The Dockerfile installs the wheel without extras: tracing needs an image of one's own.
    assert "[otel]" not in DOCKERFILE.read_text()
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`deploy/Dockerfile` (compose, the Helm chart) leaves the extra out" in readme
