"""The Helm chart rendered offline by Helm v4's own engine (helm-python-sdk), and the
JETSOURCE_* variables of docker compose and the chart checked against the settings."""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python import _native
from pydantic import BaseModel

from jetsource.core.settings import JetsourceSettings
from jetsource.ingest.settings import IngestSettings
from jetsource.observer.settings import ObserverSettings
from jetsource.processquery.settings import ProcessQuerySettings
from jetsource.projection.settings import ProjectorSettings
from jetsource.publisher.settings import PublisherSettings
from jetsource.query.settings import QuerySettings
from jetsource.snapshotter.settings import SnapshotterSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "jetsource"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# The newest Kubernetes whose schemas kubernetes-validate ships: rendered and validated
# against it.
KUBE_VERSION = kubernetes_validate.latest_version()

# The console scripts of pyproject.toml, and the settings class each process loads.
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SETTINGS: dict[str, type[JetsourceSettings]] = {
    "jetsource-publisher": PublisherSettings,
    "jetsource-projector": ProjectorSettings,
    "jetsource-snapshotter": SnapshotterSettings,
    "jetsource-query": QuerySettings,
    "jetsource-observer": ObserverSettings,
    "jetsource-process-query": ProcessQuerySettings,
    "jetsource-ingest": IngestSettings,
    # The CLI's deployment uses (streams ensure, projector admin) load the projector's.
    "jetsource": ProjectorSettings,
}
# Read by JetsourceSettings.load() itself, not a settings field.
SPECIAL = {"JETSOURCE_SECRETS_DIR"}


def values_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / name).read_text())
    return loaded


def render(
    values: Mapping[str, Any] | None = None,
    api_versions: tuple[str, ...] = (),
    name: str = "js",
    namespace: str = "ctx",
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` renders it (hooks and tests
    included). ``api_versions`` stands for what the cluster serves (`--api-versions`):
    helm-python-sdk 0.2.2 takes it, and the Kubernetes version, in its render options,
    but its Python wrapper does not pass them yet, hence the native call."""
    options = {
        "name": name,
        "namespace": namespace,
        "kube_version": f"v{KUBE_VERSION}",
        "api_versions": list(api_versions),
    }
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(dict(values) if values else None)
        out = _native.call_string(
            "helm_render",
            chart._raw(),
            json.dumps(values) if values else None,
            json.dumps(options),
        )
    rendered: dict[str, str] = json.loads(out)
    return rendered


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render (NOTES.txt and empty documents left out)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "Pod":
        spec: dict[str, Any] = doc["spec"]
        return spec
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


# --- JETSOURCE_* variables against the settings classes -------------------------------


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def unknown_variable(settings: type[BaseModel], name: str) -> str | None:
    """Why ``name`` is not a setting of ``settings`` (prefix JETSOURCE_, ``__`` between
    nested names, case-insensitive), or None when it is one."""
    if name in SPECIAL:
        return None
    if not name.startswith("JETSOURCE_"):
        return f"{name}: not a JETSOURCE_ variable"
    parts = name.removeprefix("JETSOURCE_").lower().split("__")
    model: type[BaseModel] = settings
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            path = "__".join(parts[:depth]) or "(top level)"
            known = ", ".join(sorted(model.model_fields))
            return f"{name}: {settings.__name__} has no {part!r} under {path} (known: {known})"
        nested = _nested_model(field.annotation)
        if depth < len(parts) - 1 and nested is None:
            return f"{name}: {part!r} of {settings.__name__} has no nested settings"
        if nested is not None:
            model = nested
    return None


def check_environment(
    settings: type[BaseModel], env: Mapping[str, str], required: Mapping[str, str | None]
) -> list[str]:
    """Problems of one process's environment: variables that are no setting of its
    class, and required ones missing (or not of the required value, when one is given)."""
    problems = [p for name in env if (p := unknown_variable(settings, name))]
    for name, wanted in required.items():
        if name not in env:
            problems.append(f"{name}: required, missing")
        elif wanted is not None and str(env[name]) != wanted:
            problems.append(f"{name}: is {env[name]!r}, must be {wanted!r}")
    return problems


_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_]+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> str:
    """A compose value with ${VAR:-default} resolved to its default (unset variables)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


_Settings = typing.TypeVar("_Settings", bound=JetsourceSettings)


def loaded(
    monkeypatch: pytest.MonkeyPatch, settings: type[_Settings], env: Mapping[str, str]
) -> _Settings:
    """The settings a process would load from exactly this environment."""
    for name in [n for n in os.environ if n.startswith("JETSOURCE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    if "JETSOURCE_SECRETS_DIR" not in env:
        monkeypatch.setenv("JETSOURCE_SECRETS_DIR", str(ROOT / "no-secrets-here"))
    return settings.load()
