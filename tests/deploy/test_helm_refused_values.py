"""Values that rendered manifests the API server (or KEDA, or the Prometheus Operator)
refuses at install are refused by the chart at once, naming the value: an HPA or a
ScaledObject whose minimum is above its maximum, a /tmp size, a scrape interval or a
PodDisruptionBudget minAvailable that is no quantity, duration or percentage."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart import by_kind, manifests, render

KEDA = ("keda.sh/v1alpha1",)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"query": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, r"query\.autoscaling"),
        (
            {"projector": {"partitions": 1, "keda": {"enabled": True, "minReplicas": 3}}},
            r"projector\.keda\.minReplicas \(3\) is above its maximum \(2",
        ),
        (
            {
                "snapshotter": {
                    "partitions": 4,
                    "keda": {"enabled": True, "minReplicas": 3, "maxReplicas": 2},
                }
            },
            r"snapshotter\.keda\.minReplicas",
        ),
        ({"tmpSizeLimit": "lots"}, "/tmpSizeLimit"),
        ({"metrics": {"serviceMonitor": {"interval": "30"}}}, "/metrics/serviceMonitor/interval"),
        ({"metrics": {"serviceMonitor": {"scrapeTimeout": "10 s"}}}, "scrapeTimeout"),
        ({"publisher": {"pdb": {"minAvailable": "50"}}}, "/publisher/pdb/minAvailable"),
        ({"ingest": {"pdb": {"minAvailable": -1}}}, "/ingest/pdb/minAvailable"),
    ],
)
def test_a_value_kubernetes_would_refuse_is_refused_naming_it(
    values: dict[str, Any], named: str
) -> None:
    with pytest.raises(helm.HelmError, match=named):
        render(values, KEDA)


def test_the_same_kinds_of_values_done_right_render() -> None:
    values = {
        "query": {"autoscaling": {"minReplicas": 3, "maxReplicas": 3}},
        "projector": {"partitions": 4, "keda": {"enabled": True, "minReplicas": 2}},
        "tmpSizeLimit": "128Mi",
        "metrics": {"serviceMonitor": {"interval": "1m30s", "scrapeTimeout": "500ms"}},
        "publisher": {"pdb": {"minAvailable": "50%"}},
    }
    docs = manifests(render(values, KEDA))
    scaled = by_kind(docs, "ScaledObject")["js-jetsource-projector"]["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (2, 4)
    assert (
        by_kind(docs, "PodDisruptionBudget")["js-jetsource-publisher"]["spec"]["minAvailable"]
        == "50%"
    )
