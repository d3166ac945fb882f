"""extraEnv: the s3:// archive's AWS_* credentials (or any non-jetsource variable) for
every container of the release. The query service, the projector and the admin Job read
the archive as the archiver does, but only the archiver's env could carry credentials:
with static keys every other reader of an s3:// archive was refused by the store."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.deploy.chart import KUBE_VERSION, by_kind, manifests, pod_spec, render

KEY = {
    "name": "AWS_SECRET_ACCESS_KEY",
    "valueFrom": {"secretKeyRef": {"name": "jetsource-archive", "key": "secret-access-key"}},
}
REGION = {"name": "AWS_REGION", "value": "eu-west-1"}
EVERYTHING: dict[str, Any] = {
    "extraEnv": [REGION, KEY],
    "config": {"env": {"JETSOURCE_ARCHIVE__URL": "s3://archive/jetsource"}},
    "admin": {"enabled": True},
    "archiver": {
        "enabled": True,
        "env": [{"name": "JETSOURCE_NATS__USER", "value": "archiver"}],
    },
    "sessionsPruner": {"enabled": True},
}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]
    return pod_spec(doc)["containers"]  # type: ignore[no-any-return]


def test_every_container_gets_it() -> None:
    docs = manifests(render(EVERYTHING))
    seen = 0
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job", "CronJob", "Pod"):
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        for container in containers(doc):
            assert REGION in container["env"] and KEY in container["env"], doc["metadata"]["name"]
            seen += 1
    assert seen == 7 + 2 + 2 + 1  # Deployments, streams and admin Jobs, CronJobs, test pod
    archiver = by_kind(docs, "CronJob")["js-jetsource-archiver"]
    assert {"name": "JETSOURCE_NATS__USER", "value": "archiver"} in containers(archiver)[0]["env"]


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"name": "AWS_SECRET_ACCESS_KEY", "value": "s3cr3t"}, "extraEnv: AWS_SECRET_ACCESS_KEY"),
        ({"name": "JETSOURCE_NATS__URL", "value": "nats://x"}, "extraEnv: JETSOURCE_NATS__URL"),
    ],
)
def test_a_plain_secret_or_a_jetsource_setting_is_refused(
    entry: dict[str, str], named: str
) -> None:
    with pytest.raises(helm.HelmError, match=named):
        render({"extraEnv": [entry]})


def test_none_by_default() -> None:
    query = by_kind(manifests(render()), "Deployment")["js-jetsource-query"]
    assert all(not e["name"].startswith("AWS_") for e in containers(query)[0]["env"])
