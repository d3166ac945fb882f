"""The Helm chart runs the archiver as a CronJob when asked (and not otherwise): a real
`jetsource archive compact` command, one run at a time, restricted like every pod,
with its own environment (the archiver's NATS user) and the shared settings that make
the stream compacting; the manifests validate against Kubernetes."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.chart import KUBE_VERSION, by_kind, manifests, pod_spec, render
from tests.deploy.test_helm_chart import cli_accepts

pytestmark = pytest.mark.integration

COMPACTING = {
    "JETSOURCE_EVENTSTORE__RETENTION": "age+compaction",
    "JETSOURCE_EVENTSTORE__MAX_AGE_S": "2592000",
    "JETSOURCE_ARCHIVE__URL": "s3://archive/jetsource",
}


def test_the_archiver_cronjob_runs_compact_with_its_own_credentials() -> None:
    assert "js-jetsource-archiver" not in by_kind(manifests(render()), "CronJob")
    values: dict[str, Any] = {
        "config": {"env": COMPACTING},
        "archiver": {
            "enabled": True,
            "env": [{"name": "JETSOURCE_NATS__USER", "value": "archiver"}],
        },
    }
    docs = manifests(render(values))
    job = by_kind(docs, "CronJob")["js-jetsource-archiver"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["jetsource"]
    assert container["args"][:2] == ["archive", "compact"]
    cli_accepts(container["args"])
    assert {"name": "JETSOURCE_NATS__USER", "value": "archiver"} in container["env"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["restartPolicy"] == "Never"
    config = by_kind(docs, "ConfigMap")["js-jetsource"]["data"]
    for name, value in COMPACTING.items():
        assert config[name] == value
    assert pod_spec(by_kind(docs, "Deployment")["js-jetsource-query"])  # reads the same config
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
