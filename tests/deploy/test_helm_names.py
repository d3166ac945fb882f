"""Object names of the chart for every release name Helm accepts (up to 53 characters)
and every fullnameOverride: each within what Kubernetes takes for its kind, and every
reference (Service hosts of the helm test, HPA and KEDA targets, the Ingress backend)
pointing at an object the render holds."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart import by_kind, manifests, pod_spec, render

# Every optional object on, so every name is rendered.
EVERYTHING = {
    "admin": {"enabled": True},
    "sessionsPruner": {"enabled": True},
    "archiver": {"enabled": True},
    "config": {"env": {"JETSOURCE_ARCHIVE__URL": "s3://archive/jetsource"}},
    "ingest": {"ingress": {"enabled": True}},
    "projector": {"partitions": 2, "replicas": 2, "keda": {"enabled": True}},
    "metrics": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}},
}
APIS = ("monitoring.coreos.com/v1", "keda.sh/v1alpha1")
# A Service's name is a DNS label (RFC 1035); a Job's name is also the value of its
# pods' job-name label (63); a CronJob's at most 52 (its Jobs add 11 characters).
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LIMITS = {"Service": 63, "Job": 63, "CronJob": 52}
DEFAULT_LIMIT = 253


def names_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        limit = LIMITS.get(kind, DEFAULT_LIMIT)
        if len(name) > limit:
            problems.append(f"{kind} {name}: {len(name)} characters, at most {limit}")
        if kind == "Service" and not DNS_LABEL.match(name):
            problems.append(f"Service {name}: not a DNS label")
        for key, value in doc["metadata"].get("labels", {}).items():
            if len(str(value)) > 63:
                problems.append(f"{kind} {name}: label {key} over 63 characters")
    return problems


def references_problems(docs: list[dict[str, Any]], namespace: str) -> list[str]:
    problems = []
    services = by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    test = next(iter(by_kind(docs, "Pod").values()))
    for env in pod_spec(test)["containers"][0]["env"]:
        if env["name"] in ("PUBLISHER", "QUERY", "PROCESSES"):
            host = env["value"].rsplit(":", 1)[0]
            service = host.removesuffix(f".{namespace}.svc")
            if service not in services:
                problems.append(f"helm test {env['name']}: no Service {service}")
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, doc in by_kind(docs, kind).items():
            target = doc["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                problems.append(f"{kind} {name}: no Deployment {target}")
    for name, doc in by_kind(docs, "Ingress").items():
        for rule in doc["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]["name"]
                if backend not in services:
                    problems.append(f"Ingress {name}: no Service {backend}")
    for kind in ("Deployment", "Service", "CronJob", "NetworkPolicy", "PodDisruptionBudget"):
        found = [d["metadata"]["name"] for d in docs if d["kind"] == kind]
        if len(found) != len(set(found)):
            problems.append(f"two {kind} objects share a name: {sorted(found)}")
    return problems


@pytest.mark.parametrize(
    ("release", "override"),
    [
        ("js", {}),
        ("a" * 53, {}),  # the longest release name Helm accepts
        ("payments-eventsourcing-production-eu-west-1", {}),
        ("jetsource-" + "b" * 43, {}),  # the release name already says the chart's
        ("js", {"fullnameOverride": "c" * 63}),
        ("js", {"nameOverride": "d" * 63}),
    ],
    ids=["short", "53", "43-plus-chart", "contains-chart", "fullnameOverride", "nameOverride"],
)
def test_every_name_fits_its_kind_and_every_reference_resolves(
    release: str, override: dict[str, Any]
) -> None:
    docs = manifests(render(EVERYTHING | override, APIS, name=release))
    kinds = {d["kind"] for d in docs}
    assert {"Service", "Job", "CronJob", "Ingress", "ScaledObject", "Pod"} <= kinds
    assert names_problems(docs) == []
    assert references_problems(docs, "ctx") == []


def test_short_names_are_kept_as_they_were() -> None:
    docs = manifests(render(EVERYTHING, APIS, name="js"))
    assert "js-jetsource-snapshotter-metrics" in by_kind(docs, "Service")
    assert set(by_kind(docs, "CronJob")) == {
        "js-jetsource-sessions-pruner",
        "js-jetsource-archiver",
    }


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"fullnameOverride": "Bad_Name"}, "/fullnameOverride"),
        ({"fullnameOverride": "1st-release"}, "/fullnameOverride"),  # a Service starts a-z
        ({"nameOverride": "UPPER"}, "/nameOverride"),
        ({"nameOverride": "trailing-"}, "/nameOverride"),
    ],
)
def test_the_schema_refuses_names_kubernetes_would(override: dict[str, Any], field: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=field):
        render(override)
