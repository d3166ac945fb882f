"""docker-compose.yml: valid against the Compose specification, every JETSOURCE_*
variable a real setting of the process it configures, servers named, gRPC reachable from
the host, and start order by health."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.deploy.chart import (
    COMPOSE,
    ROOT,
    SCRIPTS,
    SETTINGS,
    check_environment,
    interpolate,
    loaded,
)

# What every jetsource process needs named (unset URLs mean "local devstack server").
SERVERS = {
    "JETSOURCE_NATS__URL": "nats://nats:4222",
    "JETSOURCE_VALKEY__URL": "redis://valkey:6379/0",
    "JETSOURCE_GRAPH__URI": "bolt://neo4j:7687",
    "JETSOURCE_GRAPH__USER": "neo4j",
    "JETSOURCE_GRAPH__PASSWORD": None,
    # Every server asks for credentials (#18: compose published them without auth).
    "JETSOURCE_NATS__USER": None,
    "JETSOURCE_NATS__PASSWORD": None,
    "JETSOURCE_VALKEY__PASSWORD": None,
}
# gRPC servers bind 127.0.0.1 by default: unreachable from outside the container.
BINDINGS = {
    "publisher": {"JETSOURCE_PUBLISHER__GRPC_HOST": "0.0.0.0"},
    "query": {"JETSOURCE_QUERY__GRPC_HOST": "0.0.0.0"},
    "observer": {"JETSOURCE_OBSERVER__GRPC_HOST": "0.0.0.0"},
    "process-query": {"JETSOURCE_PROCESS_QUERY__GRPC_HOST": "0.0.0.0"},
    "ingest": {"JETSOURCE_INGEST__HOST": "0.0.0.0", "JETSOURCE_INGEST__GRPC_HOST": "0.0.0.0"},
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded_: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded_


def jetsource_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in compose["services"].items()
        if str(s.get("image", "")).startswith("jetsource:")
    }


def settings_class(service: dict[str, Any]) -> Any:
    script = service["command"][0]
    assert script in SCRIPTS, f"{script} is not a console script of pyproject.toml"
    return SETTINGS[script]


def problems(compose: dict[str, Any]) -> list[str]:
    """Every JETSOURCE_* variable of every jetsource service against its settings."""
    found = []
    for name, service in jetsource_services(compose).items():
        env = {k: interpolate(v) for k, v in service.get("environment", {}).items()}
        required = SERVERS | BINDINGS.get(name, {})
        found += [f"{name}: {p}" for p in check_environment(settings_class(service), env, required)]
    return found


def published(service: dict[str, Any]) -> list[str]:
    """The service's published ports with ${VAR:-default} at their defaults."""
    return [interpolate(p) for p in service.get("ports", [])]


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_four_services_and_the_stream_provisioning_run_from_the_one_image(
    compose: dict[str, Any],
) -> None:
    services = jetsource_services(compose)
    commands = {name: s["command"] for name, s in services.items()}
    assert commands == {
        "streams": ["jetsource", "streams", "ensure", "--timeout", "60"],
        "publisher": ["jetsource-publisher"],
        "projector": ["jetsource-projector"],
        "snapshotter": ["jetsource-snapshotter"],
        "query": ["jetsource-query"],
        "observer": ["jetsource-observer"],
        "process-query": ["jetsource-process-query"],
        "ingest": ["jetsource-ingest"],
    }
    for name, service in services.items():
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
    assert (ROOT / "deploy" / "Dockerfile").is_file()
    assert {"nats", "valkey", "neo4j"} <= set(compose["services"])


def test_every_jetsource_variable_is_a_setting_and_the_required_ones_are_set(
    compose: dict[str, Any],
) -> None:
    assert problems(compose) == []


@pytest.mark.parametrize(
    ("service", "rename", "expected"),
    [
        # A typo in a nested name: ignored at run time (extra="ignore"), so gRPC would
        # bind 127.0.0.1 inside the container and the host could not reach it.
        ("publisher", ("JETSOURCE_PUBLISHER__GRPC_HOST", "JETSOURCE_PUBLISHER__GRCP_HOST"), 2),
        # One underscore instead of two: not nested, no such top-level setting.
        ("query", ("JETSOURCE_VALKEY__URL", "JETSOURCE_VALKEY_URL"), 2),
        # A setting of another service.
        ("snapshotter", ("JETSOURCE_SNAPSHOTTER__HOST", "JETSOURCE_PUBLISHER__HOSTNAME"), 1),
    ],
)
def test_a_misspelled_variable_fails_the_check(
    compose: dict[str, Any], service: str, rename: tuple[str, str], expected: int
) -> None:
    mutated = copy.deepcopy(compose)
    env = mutated["services"][service]["environment"]
    old, new = rename
    env[new] = env.pop(old)
    found = problems(mutated)
    assert len(found) == expected, found
    assert all(p.startswith(f"{service}: ") for p in found)
    assert any(new in p for p in found)


# Where each process listens, as its settings say after loading its environment.
LISTENS: dict[str, Callable[[Any], str]] = {
    "publisher": lambda s: s.publisher.target(),
    "query": lambda s: s.query.target(),
    "observer": lambda s: s.observer.target(),
    "process-query": lambda s: s.process_query.target(),
    "ingest": lambda s: f"{s.ingest.host}:{s.ingest.http_port}",
    "projector": lambda s: f"{s.projector.host}:{s.projector.http_port}",
    "snapshotter": lambda s: f"{s.snapshotter.host}:{s.snapshotter.http_port}",
}


def test_each_process_loads_its_servers_and_listens_where_compose_publishes(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    listening: dict[str, str] = {}
    for name, service in jetsource_services(compose).items():
        env = {k: interpolate(v) for k, v in service["environment"].items()}
        settings: Any = loaded(monkeypatch, settings_class(service), env)
        assert settings.nats_url() == "nats://nats:4222", name
        assert settings.valkey_url() == "redis://valkey:6379/0", name
        assert settings.graph_uri() == "bolt://neo4j:7687", name
        assert settings.graph_auth() == ("neo4j", "jetsource-dev"), name
        assert settings.graph.database == "neo4j", name  # Community has one database
        if name in LISTENS:
            listening[name] = LISTENS[name](settings)
            port = listening[name].rsplit(":", 1)[1]
            assert f"127.0.0.1:{port}:{port}" in published(service), name
    assert listening == {
        "publisher": "0.0.0.0:50051",
        "query": "0.0.0.0:50052",
        "observer": "0.0.0.0:50053",
        "process-query": "0.0.0.0:50055",
        "ingest": "0.0.0.0:8088",
        "projector": "0.0.0.0:9102",
        "snapshotter": "0.0.0.0:9103",
    }


def test_the_host_reaches_publisher_and_query_on_the_cli_defaults(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jetsource ctx` on the host, with no settings, talks to these published ports."""
    from jetsource.publisher.settings import PublisherSettings
    from jetsource.query.settings import QuerySettings

    host_publisher = loaded(monkeypatch, PublisherSettings, {}).publisher.target()
    host_query = loaded(monkeypatch, QuerySettings, {}).query.target()
    assert host_publisher == "127.0.0.1:50051" and host_query == "127.0.0.1:50052"
    assert "127.0.0.1:50051:50051" in published(compose["services"]["publisher"])
    assert "127.0.0.1:50052:50052" in published(compose["services"]["query"])


def test_services_start_in_order_of_health_after_the_streams_exist(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in jetsource_services(compose).items():
        depends = service["depends_on"]
        assert depends["nats"] == {"condition": "service_healthy"}, name
        for target, rule in depends.items():
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}'s health"
        if name == "streams":
            assert service["restart"] == "no"
            continue
        assert depends["streams"] == {"condition": "service_completed_successfully"}, name
        check = service["healthcheck"]["test"]
        assert check[:3] == ["CMD", "python", "/opt/jetsource/healthcheck.py"], name
    for name in ("projector", "query"):  # the read models live in Valkey and the graph
        assert services[name]["depends_on"]["valkey"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["neo4j"]["condition"] == "service_healthy"
    assert (
        services["neo4j"]["environment"]["NEO4J_AUTH"] == "neo4j/${NEO4J_PASSWORD:-jetsource-dev}"
    )
    assert (
        services["publisher"]["environment"]["JETSOURCE_GRAPH__PASSWORD"]
        == "${NEO4J_PASSWORD:-jetsource-dev}"
    )


def test_every_port_is_published_on_localhost_only_by_default(compose: dict[str, Any]) -> None:
    """#18: NATS, Valkey and Neo4j were published on every interface."""
    ports = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert {"nats", "valkey", "neo4j", "publisher", "query", "prometheus", "grafana"} <= set(ports)
    for name, service_ports in ports.items():
        for port in service_ports:
            assert isinstance(port, str) and port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), name
            assert interpolate(port).count(":") == 2, (name, port)


def test_every_server_asks_for_credentials(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    nats_env = services["nats"]["environment"]
    assert nats_env["NATS_USER"] == "${NATS_USER:-jetsource}"
    assert nats_env["NATS_PASSWORD"] == "${NATS_PASSWORD:-jetsource-dev}"
    config = (ROOT / "deploy" / "nats" / "jetstream.conf").read_text()
    assert "$NATS_USER" in config and "$NATS_PASSWORD" in config
    assert (
        services["valkey"]["environment"]["VALKEY_PASSWORD"] == "${VALKEY_PASSWORD:-jetsource-dev}"
    )
    assert '--requirepass "$$VALKEY_PASSWORD"' in " ".join(services["valkey"]["command"])
    assert "$$VALKEY_PASSWORD" in " ".join(services["valkey"]["healthcheck"]["test"])
    for name, service in jetsource_services(compose).items():
        env = {k: interpolate(v) for k, v in service["environment"].items()}
        settings: Any = loaded(monkeypatch, settings_class(service), env)
        assert settings.nats.user == "jetsource", name
        assert settings.nats.password.get_secret_value() == "jetsource-dev", name
        assert settings.valkey.password.get_secret_value() == "jetsource-dev", name
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_PASSWORD:-jetsource-dev}"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_monitoring_profile_provisions_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    # Nothing else is behind a profile: a plain `up` starts jetsource without them.
    assert [n for n, s in services.items() if "profiles" in s] == ["prometheus", "grafana"]
    mounts = {
        service: {v.split(":")[0]: v.split(":")[1] for v in services[service]["volumes"]}
        for service in ("prometheus", "grafana")
    }
    for source in [*mounts["prometheus"], *mounts["grafana"]]:
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
    assert mounts["prometheus"]["./deploy/prometheus/prometheus.yml"] == (
        "/etc/prometheus/prometheus.yml"
    )
    assert mounts["prometheus"]["./deploy/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    assert mounts["grafana"]["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/jetsource.yml").read_text()
    )
    path = dashboards["providers"][0]["options"]["path"]
    assert mounts["grafana"]["./deploy/grafana/jetsource.json"] == f"{path}/jetsource.json"
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_every_metrics_port_compose_configures(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    expected = set()
    for name, service in jetsource_services(compose).items():
        if name == "streams":
            continue
        env = {k: interpolate(v) for k, v in service["environment"].items()}
        settings: Any = loaded(monkeypatch, settings_class(service), env)
        options = getattr(settings, name.replace("-", "_"))
        port = options.metrics_port if hasattr(options, "metrics_port") else options.http_port
        expected.add(f"{name}:{port}")
    assert expected == {
        "publisher:9101",
        "projector:9102",
        "snapshotter:9103",
        "query:9104",
        "observer:9105",
        "process-query:9106",
        "ingest:8088",
    }
    assert expected <= targets
    # No target label "service": the metrics carry their own and would be renamed.
    for job in config["scrape_configs"]:
        for sc in job["static_configs"]:
            assert "service" not in sc.get("labels", {}), job["job_name"]
