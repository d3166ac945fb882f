"""helm/jetsource, linted and rendered by Helm v4's own engine (helm-python-sdk, offline),
every manifest validated against the newest Kubernetes schemas kubernetes-validate ships,
the values against values.schema.json, and the render's promises checked one by one."""

from __future__ import annotations

import copy
import json
import shlex
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import typer.main

from jetsource.cli.app import app
from tests.deploy.chart import (
    CHART,
    KUBE_VERSION,
    SCRIPTS,
    SETTINGS,
    by_kind,
    check_environment,
    loaded,
    manifests,
    pod_spec,
    render,
    unknown_variable,
    values_file,
)

PRODUCTION = values_file("values-production.yaml")
MONITORING = ("monitoring.coreos.com/v1",)
EXISTING = {"secrets": {"existingSecret": "jetsource-mine", "graphPassword": "not-rendered"}}
WORKLOADS = ("Deployment", "Job", "Pod")
# The Prometheus Operator's kinds: their shape is asserted (here and test_operator_pack.py).
CRDS = ("ServiceMonitor", "PrometheusRule")


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    """The renders the tests look at, by name."""
    return {
        "default": manifests(render()),
        "production": manifests(render(PRODUCTION)),
        "production+crds": manifests(render(PRODUCTION, MONITORING)),
        "existing-secret": manifests(render(EXISTING, MONITORING)),
        "admin": manifests(render({"admin": {"enabled": True}})),
    }


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[f"js-jetsource-{component}"]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


# --- lint, schema, Kubernetes validation ----------------------------------------------


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["default", "production"])
def test_the_chart_lints_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; only "icon is recommended" (1, info) may remain.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded_: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(loaded_)
    return loaded_


def effective(values: dict[str, Any] | None) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values)


@pytest.mark.parametrize("name", ["values.yaml", "values-production.yaml"])
def test_the_values_files_validate_against_the_schema(name: str, schema: dict[str, Any]) -> None:
    jsonschema.validate(effective(values_file(name)), schema)
    if name == "values.yaml":  # the defaults alone are complete
        jsonschema.validate(values_file(name), schema)


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        # One replica per partition: more only with partitions > 0 (#20).
        ({"projector": {"replicas": 2}}, "minimum"),
        ({"snapshotter": {"replicas": 3}}, "minimum"),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "const"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "const"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "const"),
        ({"publisher": {"replica": 3}}, "additionalProperties"),
        ({"nats": {"url": "http://nats:4222"}}, "pattern"),
        ({"config": {"env": {"jetsource_nats__url": "x"}}}, "pattern"),  # JETSOURCE_ only
        # null removes a default in Helm: no CPU request leaves the scheduler guessing.
        ({"publisher": {"resources": {"requests": {"cpu": None}}}}, "required"),
        ({"image": {"digest": "latest"}}, "pattern"),
    ],
)
def test_the_schema_refuses_unsafe_or_impossible_values(
    override: dict[str, Any], complaint: str, schema: dict[str, Any]
) -> None:
    merged = effective(override)
    with pytest.raises(jsonschema.ValidationError) as caught:
        jsonschema.validate(merged, schema)
    assert caught.value.validator == complaint
    with pytest.raises(helm.HelmValuesError):  # and Helm refuses it at install time
        render(override)


def test_every_manifest_validates_against_kubernetes(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    validated: dict[str, int] = {}
    for name, docs in renders.items():
        for doc in docs:
            if doc["kind"] in CRDS:  # kubernetes-validate has no schema for them
                continue
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            validated[name] = validated.get(name, 0) + 1
    print(f"validated against Kubernetes {KUBE_VERSION} (strict): {validated}")
    assert validated["default"] >= 20 and validated["production"] >= 20
    kinds = {d["kind"] for docs in renders.values() for d in docs}
    assert kinds >= {
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
        "Pod",
        "ServiceMonitor",
        "PrometheusRule",
    }


# --- probes, security, resources ------------------------------------------------------


def test_grpc_services_have_native_grpc_probes_and_workers_http_healthz(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in renders.values():
        for component, port in (
            ("publisher", 50051),
            ("query", 50052),
            ("observer", 50053),
            ("processquery", 50055),
        ):
            c = container(deployment(docs, component))
            assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in c["ports"]
            for probe in ("startupProbe", "readinessProbe"):
                assert c[probe]["grpc"] == {"port": port}, (component, probe)
            # Liveness asks the name that stays SERVING while the process answers: a
            # replica that cannot write is out of the Service, not restarted in a loop.
            assert c["livenessProbe"]["grpc"] == {"port": port, "service": "liveness"}
        for component, port in (("projector", 9102), ("snapshotter", 9103), ("ingest", 8088)):
            c = container(deployment(docs, component))
            assert {"name": "http", "containerPort": port, "protocol": "TCP"} in c["ports"]
            for probe in ("startupProbe", "readinessProbe"):
                assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
            # As the gRPC services' "liveness": a dependency away is not restarted for.
            assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
            # The kubelet probes the pod's IP: the worker must not listen on loopback only.
            env = {e["name"]: e["value"] for e in c["env"]}
            assert env[f"JETSOURCE_{component.upper()}__HOST"] == "0.0.0.0"
            assert env[f"JETSOURCE_{component.upper()}__HTTP_PORT"] == str(port)


def test_every_pod_is_restricted_non_root_read_only_and_sized(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    seen = 0
    for name, docs in renders.items():
        for doc in workloads(docs):
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            spec = pod_spec(doc)
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001, where
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes["tmp"], where
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], where
                assert set(c["resources"]["requests"]) == {"cpu", "memory"}, where
                assert "memory" in c["resources"]["limits"], where
                seen += 1
    assert seen >= 6 * len(renders)  # 4 services, the streams hook, the test pod


def test_pods_run_what_the_image_provides(renders: dict[str, list[dict[str, Any]]]) -> None:
    for docs in renders.values():
        for doc in workloads(docs):
            command = container(doc)["command"]
            assert command[0] in SCRIPTS or command[:2] == ["/bin/sh", "-ec"], command
            assert container(doc)["image"] == "jetsource:0.1.0" or doc in renders["production"]
    prod = deployment(renders["production"], "publisher")
    assert container(prod)["image"] == "registry.example.com/jetsource:0.1.0"
    digest = "sha256:" + "ab" * 32
    pinned = manifests(render({"image": {"digest": digest}}))
    assert container(deployment(pinned, "query"))["image"] == f"jetsource@{digest}"


# --- replicas: PDB, HPA, single workers ------------------------------------------------


def pdbs(docs: list[dict[str, Any]]) -> set[str]:
    return set(by_kind(docs, "PodDisruptionBudget"))


def test_a_disruption_budget_exists_only_where_more_than_one_replica_runs(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    assert pdbs(renders["default"]) == {
        "js-jetsource-publisher",
        "js-jetsource-query",
        "js-jetsource-observer",
        "js-jetsource-processquery",
        "js-jetsource-ingest",
    }
    single = {
        "publisher": {"replicas": 1},
        "query": {"replicas": 1, "autoscaling": {"enabled": False}},
        "observer": {"replicas": 1},
        "processquery": {"replicas": 1},
        "ingest": {"replicas": 1},
    }
    assert pdbs(manifests(render(single))) == set()
    scaled_to_one = {
        "query": {"autoscaling": {"minReplicas": 1}},
        "observer": {"replicas": 1},
        "processquery": {"replicas": 1},
        "ingest": {"enabled": False},
    }
    assert pdbs(manifests(render(scaled_to_one))) == {"js-jetsource-publisher"}
    prod = by_kind(renders["production"], "PodDisruptionBudget")
    assert prod["js-jetsource-publisher"]["spec"]["minAvailable"] == 2
    selector = prod["js-jetsource-query"]["spec"]["selector"]["matchLabels"]
    assert selector == deployment(renders["production"], "query")["spec"]["selector"]["matchLabels"]


def test_query_scales_with_an_hpa_that_owns_its_replicas(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    hpa = by_kind(renders["production"], "HorizontalPodAutoscaler")["js-jetsource-query"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "js-jetsource-query",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in deployment(renders["production"], "query")["spec"]
    fixed = manifests(render({"query": {"autoscaling": {"enabled": False}, "replicas": 4}}))
    assert by_kind(fixed, "HorizontalPodAutoscaler") == {}
    assert deployment(fixed, "query")["spec"]["replicas"] == 4
    # Only the query service autoscales.
    assert set(by_kind(renders["production"], "HorizontalPodAutoscaler")) == {"js-jetsource-query"}


def test_workers_run_one_replica_and_never_two_at_once(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in renders.values():
        for component in ("projector", "snapshotter"):
            spec = deployment(docs, component)["spec"]
            assert spec["replicas"] == 1
            assert spec["strategy"] == {"type": "Recreate"}
    defaults = values_file("values.yaml")
    assert "one replica per partition" in (CHART / "values.yaml").read_text().lower()
    assert defaults["projector"]["replicas"] == defaults["snapshotter"]["replicas"] == 1


# --- secrets --------------------------------------------------------------------------


def secret_volumes(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": v["secret"]["secretName"]
        for d in workloads(docs)
        for v in pod_spec(d)["volumes"]
        if "secret" in v
    }


def test_with_an_existing_secret_none_is_rendered_and_pods_mount_that_one(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    docs = renders["existing-secret"]
    assert by_kind(docs, "Secret") == {}
    mounted = secret_volumes(docs)
    assert set(mounted.values()) == {"jetsource-mine"}
    assert {k for k in mounted if k.startswith("Deployment/")} == {
        f"Deployment/js-jetsource-{c}"
        for c in (
            "publisher",
            "query",
            "observer",
            "processquery",
            "ingest",
            "projector",
            "snapshotter",
        )
    }
    assert "Job/js-jetsource-streams" in mounted
    for doc in workloads(docs):
        for c in pod_spec(doc)["containers"]:
            for e in c.get("env", []):  # secrets are files, never inline variables
                assert "PASSWORD" not in e["name"] and "TOKEN" not in e["name"], e
    # Without it: the chart's Secret, and a hook-scoped copy for the pre-install Job
    # (hooks run before the release's own resources exist).
    default = renders["default"]
    assert set(by_kind(default, "Secret")) == {"js-jetsource", "js-jetsource-streams"}
    mounted = secret_volumes(default)
    assert mounted.pop("Job/js-jetsource-streams") == "js-jetsource-streams"
    assert set(mounted.values()) == {"js-jetsource"}
    hook = by_kind(default, "Secret")["js-jetsource-streams"]["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook["helm.sh/hook-weight"]) < 0


def test_secrets_are_mounted_where_the_settings_read_them(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    for doc in workloads(renders["default"]):
        mounts = {m["name"]: m for m in container(doc)["volumeMounts"]}
        assert mounts["secrets"] == {
            "name": "secrets",
            "mountPath": "/run/secrets/jetsource",
            "readOnly": True,
        }


def test_every_secret_file_the_chart_writes_is_a_setting() -> None:
    extra = {
        "jetsource_grpc__auth_tokens": '["t1","t2"]',
        "jetsource_client__token": "t1",
    }
    values = {
        "secrets": {
            "natsPassword": "a",
            "natsToken": "b",
            "valkeyPassword": "c",
            "graphPassword": "d",
            "extra": extra,
        }
    }
    for secret in by_kind(manifests(render(values)), "Secret").values():
        assert len(secret["data"]) == 6
        for key in secret["data"]:
            assert unknown_variable(SETTINGS["jetsource"], key.upper()) is None, key
    assert unknown_variable(SETTINGS["jetsource"], "JETSOURCE_GRAPH__PASSWRD") is not None


# --- monitoring, network --------------------------------------------------------------


def test_a_servicemonitor_only_where_the_crd_is_served(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    assert by_kind(renders["default"], "ServiceMonitor") == {}
    assert by_kind(renders["production"], "ServiceMonitor") == {}
    monitors = by_kind(renders["production+crds"], "ServiceMonitor")
    assert list(monitors) == ["js-jetsource"]
    monitor = monitors["js-jetsource"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = {
        name
        for name, s in by_kind(renders["production+crds"], "Service").items()
        if wanted.items() <= s["metadata"]["labels"].items()
    }
    assert selected == {
        "js-jetsource-publisher",
        "js-jetsource-query",
        "js-jetsource-processquery",
        "js-jetsource-observer",
        "js-jetsource-ingest",
        "js-jetsource-projector-metrics",
        "js-jetsource-snapshotter-metrics",
    }
    services = by_kind(renders["production+crds"], "Service")
    for name in selected:
        assert "metrics" in {p["name"] for p in services[name]["spec"]["ports"]}, name
    off = {"metrics": {"serviceMonitor": {"enabled": False}}}
    assert by_kind(manifests(render(off, MONITORING)), "ServiceMonitor") == {}


def test_network_policies_open_exactly_the_ports_the_pods_serve(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    docs = renders["production"]
    policies = by_kind(docs, "NetworkPolicy")
    for component in (
        "publisher",
        "query",
        "observer",
        "processquery",
        "ingest",
        "projector",
        "snapshotter",
    ):
        served = {p["containerPort"] for p in container(deployment(docs, component))["ports"]}
        rules = policies[f"js-jetsource-{component}"]["spec"]["ingress"]
        opened = {p["port"] for rule in rules for p in rule["ports"]}
        assert opened == served, component
    egress = policies["js-jetsource-egress"]["spec"]
    assert egress["policyTypes"] == ["Egress"]
    ports = {p["port"] for rule in egress["egress"] for p in rule["ports"]}
    assert ports >= {53, 4222, 6379, 7687, 50051, 50052, 50053, 50055}
    assert by_kind(manifests(render({"networkPolicy": {"enabled": False}})), "NetworkPolicy") == {}


# --- settings in the render -----------------------------------------------------------

REQUIRED = {
    "JETSOURCE_NATS__URL": None,
    "JETSOURCE_VALKEY__URL": None,
    "JETSOURCE_GRAPH__URI": None,
    "JETSOURCE_GRAPH__USER": None,
}
BINDINGS = {
    "publisher": {"JETSOURCE_PUBLISHER__GRPC_HOST": "0.0.0.0"},
    "query": {"JETSOURCE_QUERY__GRPC_HOST": "0.0.0.0"},
    "projector": {"JETSOURCE_PROJECTOR__HOST": "0.0.0.0"},
    "snapshotter": {"JETSOURCE_SNAPSHOTTER__HOST": "0.0.0.0"},
    "processquery": {"JETSOURCE_PROCESS_QUERY__GRPC_HOST": "0.0.0.0"},
}


def environment(doc: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """A container's JETSOURCE_* variables, ConfigMaps resolved as the kubelet does."""
    c = container(doc)
    configmaps = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env |= configmaps[source["configMapRef"]["name"]]["data"]
    env |= {e["name"]: e["value"] for e in c.get("env", [])}
    return {k: v for k, v in env.items() if k.startswith("JETSOURCE_")}


def environment_problems(docs: list[dict[str, Any]]) -> list[str]:
    found = []
    for doc in workloads(docs):
        script = container(doc)["command"][0]
        if script not in SETTINGS:
            continue  # the test pod's shell: its commands carry explicit addresses
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        required = REQUIRED | BINDINGS.get(component, {})
        env = environment(doc, docs)
        found += [
            f"{doc['metadata']['name']}: {p}"
            for p in check_environment(SETTINGS[script], env, required)
        ]
    return found


def test_every_jetsource_variable_in_the_render_is_a_setting(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in renders.items():
        assert environment_problems(docs) == [], name


def test_a_misspelled_setting_in_the_values_fails_the_check() -> None:
    typo = {"config": {"env": {"JETSOURCE_EVENTSTORE__DUPLICATE_WINDOW": "300"}}}
    found = environment_problems(manifests(render(typo)))
    # Every process reads the ConfigMap, the hook Job carries it inline: 8 complaints.
    assert len(found) == 8 and all("duplicate_window" in p for p in found), found
    right = {"config": {"env": {"JETSOURCE_EVENTSTORE__DUPLICATE_WINDOW_S": "300"}}}
    assert environment_problems(manifests(render(right))) == []


def test_each_process_loads_its_servers_and_binds_where_its_service_points(
    renders: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = renders["production"]
    services = by_kind(docs, "Service")
    scripts = {"processquery": "jetsource-process-query"}
    options = {"processquery": "process_query"}
    for component in ("publisher", "query", "observer", "processquery"):
        doc = deployment(docs, component)
        script = scripts.get(component, f"jetsource-{component}")
        settings: Any = loaded(monkeypatch, SETTINGS[script], environment(doc, docs))
        assert settings.nats_url() == "nats://nats.nats.svc:4222"
        assert settings.valkey_url() == "redis://valkey.valkey.svc:6379/0"
        assert settings.graph_uri() == "neo4j://neo4j.neo4j.svc:7687"
        assert settings.eventstore.replicas == 3 and settings.snapshots.replicas == 3
        target = getattr(settings, options.get(component, component)).target()
        assert (
            target == f"0.0.0.0:{services[f'js-jetsource-{component}']['spec']['ports'][0]['port']}"
        )
    projector = deployment(docs, "projector")
    p: Any = loaded(monkeypatch, SETTINGS["jetsource-projector"], environment(projector, docs))
    assert p.projector.models == [
        "context",
        "timeline",
        "graph",
        "processes",
        "process_timeline",
        "process_graph",
        "omni_events",
        "omni_identities",
    ]


# --- jobs and the helm test -------------------------------------------------------------


def cli_accepts(args: list[str]) -> None:
    """Parse ``jetsource <args>`` with the real CLI, without running it: unknown
    commands, unknown options and missing required ones raise."""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("jetsource", [], resilient_parsing=True)
    rest = list(args)
    while hasattr(command, "list_commands"):
        name = rest.pop(0)
        sub = command.get_command(ctx, name)
        assert sub is not None, f"jetsource has no command {name!r} here: {args}"
        command = sub
        if hasattr(command, "list_commands"):
            ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        else:
            command.make_context(name, rest, parent=ctx)


def test_streams_are_provisioned_by_a_pre_install_and_pre_upgrade_hook(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    docs = renders["default"]
    job = by_kind(docs, "Job")["js-jetsource-streams"]
    hook = job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in hook["helm.sh/hook-delete-policy"]
    command = container(job)["command"]
    assert command[:3] == ["jetsource", "streams", "ensure"]
    cli_accepts(command[1:])
    # Hooks run before the ConfigMap exists: the same settings travel inline.
    assert environment(job, docs) == by_kind(docs, "ConfigMap")["js-jetsource"]["data"]
    # ... and before the chart's ServiceAccount exists.
    assert pod_spec(job)["serviceAccountName"] == "default"
    off = manifests(render({"streams": {"provision": False}}))
    assert "js-jetsource-streams" not in by_kind(off, "Job")


ADMIN_COMMANDS = [
    ["projector", "status"],
    ["projector", "replay", "--model", "context", "--aggregate", "story-1"],
    ["projector", "replay", "-m", "graph", "--from-seq", "1200", "--to-seq", "1500"],
    ["projector", "rebuild", "--model", "context", "--to-version", "2"],
    ["projector", "cutover", "--model", "context", "--to-version", "2", "--drop-old"],
    ["projector", "dlq", "retry", "--model", "context", "--aggregate", "story-1"],
]


@pytest.mark.parametrize("args", ADMIN_COMMANDS, ids=lambda a: " ".join(a))
def test_the_admin_job_runs_a_real_projector_command(args: list[str]) -> None:
    cli_accepts(args)
    docs = manifests(render({"admin": {"enabled": True, "args": args}}))
    job = by_kind(docs, "Job")["js-jetsource-admin-1"]
    assert container(job)["command"] == ["jetsource"]
    assert container(job)["args"] == args
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})


def test_the_cli_check_refuses_commands_that_do_not_exist() -> None:
    with pytest.raises(Exception, match=r"to-version|Missing"):
        cli_accepts(["projector", "rebuild", "--model", "context"])
    with pytest.raises(Exception, match=r"No such option"):
        cli_accepts(["projector", "status", "--no-such"])
    with pytest.raises(AssertionError, match="no command"):
        cli_accepts(["projector", "rebuilt"])


def test_no_admin_job_unless_asked(renders: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in renders.items():
        admin = [j for j in by_kind(docs, "Job") if "-admin-" in j]
        assert admin == ([] if name != "admin" else ["js-jetsource-admin-1"]), name
    values_doc = (CHART / "values.yaml").read_text()
    assert '"projector","rebuild","--model","context","--to-version","2"' in values_doc


def test_helm_test_checks_grpc_health_and_a_round_trip(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    docs = renders["default"]
    pod = by_kind(docs, "Pod")["js-jetsource-test"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = container(pod)
    env = {e["name"]: e["value"] for e in c["env"]}
    services = by_kind(docs, "Service")
    for name, component in (
        ("PUBLISHER", "publisher"),
        ("QUERY", "query"),
        ("PROCESSES", "processquery"),
    ):
        host, port = env[name].rsplit(":", 1)
        service = services[f"js-jetsource-{component}"]
        assert host == f"{service['metadata']['name']}.ctx.svc"
        assert int(port) == service["spec"]["ports"][0]["port"]
    lines = [shlex.split(line) for line in c["args"][0].splitlines() if line.strip()]
    probes = [line for line in lines if line[:2] == ["python", "/opt/jetsource/healthcheck.py"]]
    assert [p[2:] for p in probes] == [
        ["grpc", "$PUBLISHER", "--service", "jetsource.context.v1.ContextCommandService"],
        ["grpc", "$QUERY", "--service", "jetsource.context.v1.ContextQueryService"],
        ["grpc", "$PROCESSES", "--service", "jetsource.process.v1.ProcessQueryService"],
    ]
    calls = [line for line in lines if line and line[0] == "jetsource"]
    assert [call[1:3] for call in calls] == [["ctx", "create"], ["ctx", "show"]]
    for call in calls:
        cli_accepts(call[1 : call.index("|")] if "|" in call else call[1:])
    assert "--publisher" in calls[0] and "--query" in calls[1]


def test_notes_say_where_things_are() -> None:
    notes = render()["jetsource/templates/NOTES.txt"]
    assert "js-jetsource-publisher.ctx.svc:50051" in notes
    assert "helm test js" in notes
    assert "monitoring.coreos.com/v1" in notes  # no ServiceMonitor, and why
    assert (
        "monitoring.coreos.com/v1" not in render(None, MONITORING)["jetsource/templates/NOTES.txt"]
    )
    # A password someone put in a URL is not printed back.
    leaky = render({"nats": {"url": "nats://js:hunter2@nats:4222"}})
    assert "hunter2" not in leaky["jetsource/templates/NOTES.txt"]
    assert "nats://***@nats:4222" in leaky["jetsource/templates/NOTES.txt"]


def test_values_production_keeps_secrets_out_of_the_values(
    renders: dict[str, list[dict[str, Any]]],
) -> None:
    secrets = copy.deepcopy(PRODUCTION["secrets"])
    assert secrets == {"existingSecret": "jetsource-secrets"}
    assert by_kind(renders["production"], "Secret") == {}
