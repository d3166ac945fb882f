"""A setting the chart sets from its own values, given again in config.env or a
process's env, is refused naming the value to set instead. It was rendered: in the
ConfigMap twice (config.env JETSOURCE_EVENTSTORE__REPLICAS beside
config.eventstore.replicas), overridden by the pod's own variable and so doing nothing
(config.env JETSOURCE_PUBLISHER__GRPC_PORT), or, in publisher.env, winning over the
chart's while the containerPort, the probes and the Service kept publisher.grpcPort: the
pod listened where nothing looked and never became ready. Every such variable of a
render is tried."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.deploy.chart import by_kind, manifests, pod_spec, render

NAMED = {"nats": {"user": "js"}, "valkey": {"username": "js"}}
DOCS = manifests(render(NAMED))
CONFIG = sorted(by_kind(DOCS, "ConfigMap")["js-jetsource"]["data"])
OWN = sorted(
    (d["metadata"]["labels"]["app.kubernetes.io/component"], e["name"])
    for d in by_kind(DOCS, "Deployment").values()
    for e in pod_spec(d)["containers"][0]["env"]
)


def test_the_lists_are_what_the_chart_sets() -> None:
    assert "JETSOURCE_EVENTSTORE__REPLICAS" in CONFIG and "JETSOURCE_NATS__USER" in CONFIG
    assert ("publisher", "JETSOURCE_PUBLISHER__GRPC_PORT") in OWN
    assert ("projector", "JETSOURCE_PROJECTOR__MODELS") in OWN
    assert len({c for c, _ in OWN}) == 7


@pytest.mark.parametrize("name", CONFIG + sorted({n for _, n in OWN}))
def test_config_env_refuses_what_the_chart_sets(name: str) -> None:
    with pytest.raises(helm.HelmError, match=rf"config\.env\.{name} is set by the chart"):
        render(NAMED | {"config": {"env": {name: "1"}}})


@pytest.mark.parametrize(("component", "name"), OWN)
def test_a_process_env_refuses_what_the_chart_sets_for_it(component: str, name: str) -> None:
    with pytest.raises(helm.HelmError, match=rf"{component}\.env\.{name} is set by the chart"):
        render({component: {"env": {name: "1"}}})


def test_other_settings_pass_and_a_process_may_override_a_shared_one() -> None:
    docs = manifests(
        render(
            {
                "config": {"env": {"JETSOURCE_EVENTSTORE__DUPLICATE_WINDOW_S": "300"}},
                "publisher": {"env": {"JETSOURCE_LOG_LEVEL": "DEBUG"}},
            }
        )
    )
    env = pod_spec(by_kind(docs, "Deployment")["js-jetsource-publisher"])["containers"][0]["env"]
    assert {"name": "JETSOURCE_LOG_LEVEL", "value": "DEBUG"} in env
