"""gRPC TLS in the chart. The kubelet's gRPC probes speak plain text only: with
config.env JETSOURCE_GRPC__TLS__CERT_FILE they asked the TLS port, never passed, and no
gRPC pod became ready. The chart now needs JETSOURCE_GRPC__HEALTH_PORT with it (the
render fails naming it) and probes that plain-text health port; the helm test pod reads
the client TLS settings from the ConfigMap, and deploy/healthcheck.py connects with them."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import helm_python as helm
import kubernetes_validate
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.chart import KUBE_VERSION, ROOT, by_kind, manifests, pod_spec, render
from tests.pki import Pki, make_pki

TLS = {
    "JETSOURCE_GRPC__TLS__CERT_FILE": "/run/secrets/jetsource/grpc.crt",
    "JETSOURCE_GRPC__TLS__KEY_FILE": "/run/secrets/jetsource/grpc.key",
}
GRPC = {"publisher": 50051, "query": 50052, "observer": 50053, "processquery": 50055}


def test_tls_without_a_health_port_is_refused_naming_it() -> None:
    with pytest.raises(helm.HelmError, match="JETSOURCE_GRPC__HEALTH_PORT"):
        render({"config": {"env": TLS}})


@pytest.mark.parametrize("health_port", [50060, "50061"])
def test_the_probes_ask_the_plain_text_health_port(health_port: int | str) -> None:
    docs = manifests(
        render({"config": {"env": TLS | {"JETSOURCE_GRPC__HEALTH_PORT": health_port}}})
    )
    port = int(health_port)
    policies = by_kind(docs, "NetworkPolicy")
    for component, grpc_port in GRPC.items():
        deployment = by_kind(docs, "Deployment")[f"js-jetsource-{component}"]
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
        (container,) = pod_spec(deployment)["containers"]
        assert {"name": "health", "containerPort": port, "protocol": "TCP"} in container["ports"]
        assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in container["ports"]
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (component, probe)
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": "liveness"}
        opened = {
            p["port"]
            for rule in policies[f"js-jetsource-{component}"]["spec"]["ingress"]
            for p in rule["ports"]
        }
        assert opened == {p["containerPort"] for p in container["ports"]}, component
    # Without TLS nothing changes: the gRPC port is probed.
    plain = manifests(render())
    (container,) = pod_spec(by_kind(plain, "Deployment")["js-jetsource-query"])["containers"]
    assert container["readinessProbe"]["grpc"] == {"port": 50052}
    assert "health" not in {p["name"] for p in container["ports"]}


def test_the_helm_test_pod_reads_the_client_settings() -> None:
    docs = manifests(render())
    (container,) = pod_spec(by_kind(docs, "Pod")["js-jetsource-test"])["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": "js-jetsource"}}]


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy/healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_health(pki: Pki) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_healthcheck_speaks_tls_with_the_client_settings(
    probe: ModuleType,
    pki: Pki,
    tls_health: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("ENABLED", "CA_FILE", "CERT_FILE", "KEY_FILE"):
        monkeypatch.delenv(f"JETSOURCE_CLIENT__TLS__{name}", raising=False)
    monkeypatch.delenv("JETSOURCE_CLIENT__SERVER_NAME", raising=False)
    # Plain text against TLS: no answer.
    assert probe.main(["grpc", tls_health, "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    monkeypatch.setenv("JETSOURCE_CLIENT__TLS__CA_FILE", str(pki.ca))
    assert probe.main(["grpc", tls_health]) == 0
    # The name the certificate carries, asked for explicitly.
    monkeypatch.setenv("JETSOURCE_CLIENT__SERVER_NAME", "localhost")
    assert probe.main(["grpc", tls_health]) == 0
    monkeypatch.setenv("JETSOURCE_CLIENT__TLS__CA_FILE", str(Path(pki.ca).parent / "absent.pem"))
    assert probe.main(["grpc", tls_health]) == 1
    assert "JETSOURCE_CLIENT__TLS__" in capsys.readouterr().err
