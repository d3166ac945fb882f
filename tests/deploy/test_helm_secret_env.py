"""No secret setting in plain text: a password, token, secret or the ingest's instances
named in config.env (the ConfigMap), a process's env or a CronJob's env list (the pod
spec) is refused at render time with a message naming the value and where it goes
instead. Every secret field of every settings class is tried, so a new one is covered."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
from pydantic import BaseModel

from tests.deploy.chart import SETTINGS, by_kind, manifests, render


def _secret_variables(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[str]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        text = repr(annotation)
        args = typing.get_args(annotation)
        nested = [
            a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        plain_union = isinstance(annotation, types.UnionType) or not args
        if nested and plain_union:
            yield from _secret_variables(nested[0], (*path, name))
        elif "SecretStr" in text or "InstanceConfig" in text:
            yield "JETSOURCE_" + "__".join((*path, name)).upper()


SECRET_VARIABLES = sorted(
    {v for settings in SETTINGS.values() for v in _secret_variables(settings, ())}
    # The devstack's own graph password is never a deployment's.
    - {"JETSOURCE_DEVSTACK__GRAPH_PASSWORD"}
)
COMPONENTS = (
    "publisher",
    "query",
    "observer",
    "processquery",
    "ingest",
    "projector",
    "snapshotter",
)


def test_the_secret_settings_are_found() -> None:
    assert {
        "JETSOURCE_NATS__PASSWORD",
        "JETSOURCE_NATS__TOKEN",
        "JETSOURCE_VALKEY__PASSWORD",
        "JETSOURCE_GRAPH__PASSWORD",
        "JETSOURCE_GRPC__AUTH_TOKENS",
        "JETSOURCE_CLIENT__TOKEN",
        "JETSOURCE_INGEST__INSTANCES",
        "JETSOURCE_INGEST__API_TOKENS",
    } <= set(SECRET_VARIABLES)


@pytest.mark.parametrize("variable", SECRET_VARIABLES)
def test_a_secret_in_config_env_is_refused(variable: str) -> None:
    with pytest.raises(helm.HelmError, match=rf"config\.env\.{variable} is a secret setting"):
        render({"config": {"env": {variable: "s3cr3t"}}})


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_secret_in_a_process_env_is_refused(component: str) -> None:
    for variable in SECRET_VARIABLES:
        with pytest.raises(helm.HelmError, match=rf"{component}\.env\.{variable} is a secret"):
            render({component: {"env": {variable: "s3cr3t"}}})


S3 = {"config": {"env": {"JETSOURCE_ARCHIVE__URL": "s3://archive/jetsource"}}}


@pytest.mark.parametrize("job", ["sessionsPruner", "archiver"])
def test_a_cronjob_takes_a_secret_only_from_a_secret_ref(job: str) -> None:
    plain = [{"name": "JETSOURCE_NATS__PASSWORD", "value": "s3cr3t"}]
    with pytest.raises(helm.HelmError, match=rf"{job}\.env: JETSOURCE_NATS__PASSWORD .*valueFrom"):
        render({job: {"enabled": True, "env": plain}} | S3)
    aws = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "s3cr3t"}]
    with pytest.raises(helm.HelmError, match="AWS_SECRET_ACCESS_KEY"):
        render({job: {"enabled": True, "env": aws}} | S3)
    ref: list[dict[str, Any]] = [
        {"name": "JETSOURCE_NATS__USER", "value": "pruner"},
        {
            "name": "JETSOURCE_NATS__PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "pruner-nats", "key": "password"}},
        },
    ]
    docs = manifests(render({job: {"enabled": True, "env": ref}} | S3))
    (cronjob,) = by_kind(docs, "CronJob").values()
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == ref


def test_paths_and_plain_settings_still_pass() -> None:
    fine = {
        "JETSOURCE_NATS__NKEY_SEED_FILE": "/run/secrets/jetsource/nkey",
        "JETSOURCE_NATS__CREDS_FILE": "/run/secrets/jetsource/creds",
        "JETSOURCE_EVENTSTORE__DUPLICATE_WINDOW_S": "300",
    }
    docs = manifests(render({"config": {"env": fine}, "publisher": {"env": fine}}))
    assert by_kind(docs, "ConfigMap")["js-jetsource"]["data"].items() >= fine.items()
