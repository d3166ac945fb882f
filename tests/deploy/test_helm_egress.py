"""The egress NetworkPolicy lets every pod reach the servers the values name: the port of
each URL of nats.url, valkey.url and graph.uri (or its scheme's default) besides
networkPolicy.serverPorts, and an s3:// archive's store. A server on another port (NATS
behind TLS on :4443, a managed Valkey on :6380) or the archive's S3 was cut off in
silence: the pods never connected. The archiver refuses to render without an s3://
archive (no pod has a disk a directory archive could live on)."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.deploy.chart import KUBE_VERSION, by_kind, manifests, render


def egress_ports(values: dict[str, Any]) -> list[list[int]]:
    policy = by_kind(manifests(render(values)), "NetworkPolicy")["js-jetsource-egress"]
    kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)
    return [[p["port"] for p in rule["ports"]] for rule in policy["spec"]["egress"]]


def server_ports(values: dict[str, Any]) -> set[int]:
    return set(egress_ports(values)[1])


def test_the_defaults_open_the_default_ports() -> None:
    assert egress_ports({}) == [[53, 53], [4222, 6379, 7687], [50051, 50052, 50053, 50055]]


@pytest.mark.parametrize(
    ("values", "wanted"),
    [
        ({"nats": {"url": "tls://nats-0.example.com:4443"}}, {4443}),
        ({"nats": {"url": "nats://a:4223, nats://b:4224,nats://c"}}, {4223, 4224, 4222}),
        ({"nats": {"url": "wss://nats.example.com"}}, {443}),
        ({"valkey": {"url": "rediss://:pw@valkey.example.com:6380/2"}}, {6380}),
        ({"graph": {"uri": "neo4j+s://graph.example.com:7688"}}, {7688}),
        ({"networkPolicy": {"serverPorts": [5432]}}, {5432, 4222, 6379, 7687}),
    ],
)
def test_every_servers_port_is_open(values: dict[str, Any], wanted: set[int]) -> None:
    assert wanted <= server_ports(values)


def test_an_s3_archive_opens_its_store() -> None:
    s3 = {"JETSOURCE_ARCHIVE__URL": "s3://archive/jetsource"}
    assert egress_ports({"config": {"env": s3}})[2] == [443]
    minio = s3 | {"JETSOURCE_ARCHIVE__ENDPOINT": "http://minio.minio.svc:9000"}
    assert egress_ports({"config": {"env": minio}})[2] == [9000]
    # No archive, no rule.
    assert len(egress_ports({})) == 3


@pytest.mark.parametrize("url", [None, "/var/lib/jetsource/archive", "file:///archive"])
def test_the_archiver_needs_an_s3_archive(url: str | None) -> None:
    env = {} if url is None else {"JETSOURCE_ARCHIVE__URL": url}
    with pytest.raises(helm.HelmError, match=r"JETSOURCE_ARCHIVE__URL: s3://bucket/prefix"):
        render({"archiver": {"enabled": True}, "config": {"env": env}})


@pytest.mark.parametrize("url", ["nats://nats:0", "nats://nats:99999"])
def test_a_port_out_of_range_opens_nothing_and_the_policy_stays_valid(url: str) -> None:
    # The service itself refuses such a URL at start, naming JETSOURCE_NATS__URL.
    assert server_ports({"nats": {"url": url}}) == {4222, 6379, 7687}


@pytest.mark.parametrize(
    ("endpoint", "port"),
    [
        ("http://otel-collector.observability:4317", 4317),
        ("otel:55680", 55680),
        ("https://otel", 443),
    ],
)
def test_a_trace_collector_is_reachable(endpoint: str, port: int) -> None:
    rules = egress_ports({"config": {"env": {"JETSOURCE_OTEL__ENDPOINT": endpoint}}})
    assert [port] in rules
