"""The chart's scale-out (#20), rendered offline: projector and snapshotter replicas
> 1 only with partitions (the schema refuses otherwise), then rolling updates, a PDB,
spreading across nodes and the partition count in their settings; an optional KEDA
ScaledObject on consumer lag. The default stays one Recreate replica, unpartitioned."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import CHART, KUBE_VERSION, by_kind, manifests, pod_spec, render

WORKERS = ("projector", "snapshotter")
ENV = {
    "projector": "JETSOURCE_PROJECTOR__PARTITIONS__COUNT",
    "snapshotter": "JETSOURCE_SNAPSHOTTER__PARTITIONS__COUNT",
}
KEDA = {
    "enabled": True,
    "minReplicas": 2,
    "maxReplicas": 20,
    "lagThreshold": 500,
    "prometheusAddress": "http://prometheus:9090",
}


def env_of(doc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod_spec(doc)["containers"][0]["env"]}


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[f"js-jetsource-{component}"]


def test_by_default_each_worker_is_one_unpartitioned_replica_never_two_at_once() -> None:
    docs = manifests(render())
    for component in WORKERS:
        d = deployment(docs, component)
        assert d["spec"]["replicas"] == 1
        assert d["spec"]["strategy"] == {"type": "Recreate"}
        assert env_of(d)[ENV[component]] == "0"
        assert "affinity" not in pod_spec(d)
    assert not {f"js-jetsource-{c}" for c in WORKERS} & set(by_kind(docs, "PodDisruptionBudget"))
    assert by_kind(docs, "ScaledObject") == {}


def test_partitioned_workers_run_several_replicas_with_a_pdb_spread_over_nodes() -> None:
    values = {c: {"replicas": 3, "partitions": 8} for c in WORKERS}
    docs = manifests(render(values))
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for component in WORKERS:
        d = deployment(docs, component)
        assert d["spec"]["replicas"] == 3
        assert d["spec"]["strategy"]["type"] == "RollingUpdate"
        assert env_of(d)[ENV[component]] == "8"
        term = pod_spec(d)["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ][0]["podAffinityTerm"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
        pdb = pdbs[f"js-jetsource-{component}"]
        assert pdb["spec"]["minAvailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
    for doc in docs:
        if doc["kind"] not in ("ServiceMonitor", "PrometheusRule"):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_keda_scales_a_partitioned_projector_on_consumer_lag() -> None:
    docs = manifests(render({"projector": {"replicas": 2, "partitions": 8, "keda": KEDA}}))
    scaled = by_kind(docs, "ScaledObject")["js-jetsource-projector"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "js-jetsource-projector"
    # More replicas than partitions + 1 (the graph's unit) would hold no lease.
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 9)
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "jetsource_projector_lag" in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "500"
    # KEDA owns the replica count; the PDB follows its minimum.
    assert "replicas" not in deployment(docs, "projector")["spec"]
    assert "js-jetsource-projector" in by_kind(docs, "PodDisruptionBudget")


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"projector": {"replicas": 2}}, "two replicas of an unpartitioned projector"),
        ({"snapshotter": {"replicas": 3, "partitions": 0}}, "unpartitioned snapshotter x3"),
        ({"projector": {"keda": KEDA}}, "autoscaling without partitions"),
        ({"projector": {"partitions": 300}}, "more partitions than allowed"),
    ],
)
def test_the_schema_refuses_replicas_without_partitions(override: dict[str, Any], why: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component, patch in override.items():
        values[component] = {**values[component], **patch}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, schema)
    with pytest.raises(helm.HelmValuesError):
        render(override)
