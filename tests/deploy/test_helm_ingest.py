"""The chart's omni ingress: its Deployment and Service, the Ingress for the providers'
webhooks (TLS from a Secret), the instances' secrets as a file the process reads, and
values the schema refuses. Rendered offline by Helm's own engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from jetsource.ingest.settings import IngestSettings
from tests.deploy.chart import KUBE_VERSION, by_kind, manifests, pod_spec, render

INSTANCES = {
    "acme": {
        "provider": "whatsapp",
        "format": "cloud",
        "app_secret": "s3cret",
        "verify_token": "vt",
    },
    "bot": {"provider": "discord", "format": "forwarder", "shared_secret": "fw"},
}
PUBLIC = {
    "ingest": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": ["hooks.example.com"],
            "tls": [{"secretName": "hooks-tls", "hosts": ["hooks.example.com"]}],
        }
    },
    "secrets": {"extra": {"jetsource_ingest__instances": json.dumps(INSTANCES)}},
}


def test_the_ingress_routes_only_webhooks_to_the_ingest_service_with_tls() -> None:
    docs = manifests(render(PUBLIC))
    ingress = by_kind(docs, "Ingress")["js-jetsource-ingest"]
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "hooks-tls", "hosts": ["hooks.example.com"]}]
    (rule,) = spec["rules"]
    assert rule["host"] == "hooks.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/webhooks/" and path["pathType"] == "Prefix"
    backend = path["backend"]["service"]
    service = by_kind(docs, "Service")[backend["name"]]
    assert backend["port"] == {"name": "http"}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8088,
        "grpc": 50054,
        "metrics": 8088,
    }
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    # Off by default: nothing is exposed unless asked.
    assert by_kind(manifests(render()), "Ingress") == {}


def test_the_instances_secret_is_a_file_the_ingress_reads(tmp_path: Path) -> None:
    docs = manifests(render(PUBLIC))
    secret = by_kind(docs, "Secret")["js-jetsource"]
    assert "jetsource_ingest__instances" in secret["data"]
    deployment = by_kind(docs, "Deployment")["js-jetsource-ingest"]
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "js-jetsource"
    env = {e["name"] for e in pod_spec(deployment)["containers"][0]["env"]}
    assert not any("SECRET" in n or "INSTANCES" in n for n in env)  # files only
    # The process reads it from the mounted directory as its instances.
    import base64

    (tmp_path / "jetsource_ingest__instances").write_bytes(
        base64.b64decode(secret["data"]["jetsource_ingest__instances"])
    )
    settings = IngestSettings(_secrets_dir=tmp_path)  # type: ignore[call-arg]
    assert set(settings.ingest.instances) == {"acme", "bot"}
    assert settings.ingest.instances["acme"].app_secret is not None
    assert settings.ingest.instances["acme"].app_secret.get_secret_value() == "s3cret"


def test_the_ingest_can_be_left_out() -> None:
    docs = manifests(render({"ingest": {"enabled": False}}))
    names = {d["metadata"]["name"] for d in docs}
    assert not any(n.endswith("-ingest") for n in names), names


@pytest.mark.parametrize(
    "override",
    [
        {"ingest": {"ingress": {"enabled": True, "hosts": []}}},
        {"ingest": {"ingress": {"enabled": True, "paths": ["webhooks"]}}},
        {"ingest": {"maxBodyBytes": 10}},
        {"ingest": {"replica": 2}},
    ],
)
def test_the_schema_refuses_impossible_ingest_values(override: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(override)
