"""The chart runs one worker a publisher or query pod: ``JETSOURCE_<P>__WORKERS`` in
config.env or the process's env was rendered, so the pod ran N workers while only
worker 0's /metrics port (metricsPort) was declared, scraped and let through the
NetworkPolicy: the others' counters were never seen (and the liveness probe saw
worker 0 alone). The render now fails naming <component>.replicas, the way to scale."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.deploy.chart import by_kind, manifests, pod_spec, render

COMPONENTS = [("publisher", "PUBLISHER"), ("query", "QUERY")]


@pytest.mark.parametrize(("component", "option"), COMPONENTS)
def test_workers_in_config_env_are_refused_naming_replicas(component: str, option: str) -> None:
    name = f"JETSOURCE_{option}__WORKERS"
    with pytest.raises(helm.HelmError, match=rf"config\.env\.{name} .*{component}\.replicas"):
        render({"config": {"env": {name: "2"}}})


@pytest.mark.parametrize(("component", "option"), COMPONENTS)
def test_workers_in_a_process_env_are_refused_naming_replicas(component: str, option: str) -> None:
    name = f"JETSOURCE_{option}__WORKERS"
    with pytest.raises(helm.HelmError, match=rf"{component}\.env\.{name} .*{component}\.replicas"):
        render({component: {"env": {name: "0"}}})


@pytest.mark.parametrize(("component", "option"), COMPONENTS)
def test_a_pod_runs_one_worker(component: str, option: str) -> None:
    deployment = by_kind(manifests(render({})), "Deployment")[f"js-jetsource-{component}"]
    env = pod_spec(deployment)["containers"][0]["env"]
    assert {"name": f"JETSOURCE_{option}__WORKERS", "value": "1"} in env
