"""Secrets as Kubernetes mounts them: files in /run/secrets/jetsource behind the
``..data`` symlinks of a Secret volume, named as the chart names its Secret's keys."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from jetsource.publisher.settings import PublisherSettings
from jetsource.query.settings import QuerySettings
from tests.deploy.chart import by_kind, loaded, manifests, render


def mount_like_kubernetes(directory: Path, files: dict[str, str]) -> Path:
    """The layout the kubelet writes: ..<timestamp>/<key>, ..data -> ..<timestamp>,
    <key> -> ..data/<key>."""
    version = directory / "..2026_01_01_00_00_00.000000001"
    version.mkdir(parents=True)
    for name, value in files.items():
        (version / name).write_text(value + "\n")  # a trailing newline is common
    os.symlink(version.name, directory / "..data")
    for name in files:
        os.symlink(f"..data/{name}", directory / name)
    return directory


def test_a_file_mounted_secret_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = mount_like_kubernetes(
        tmp_path / "secrets",
        {
            "jetsource_nats__password": "nats-pw",
            "jetsource_valkey__password": "valkey-pw",
            "jetsource_graph__password": "graph-pw",
        },
    )
    settings = loaded(monkeypatch, QuerySettings, {"JETSOURCE_SECRETS_DIR": str(secrets)})
    assert settings.nats.password is not None
    assert settings.nats.password.get_secret_value() == "nats-pw"
    assert settings.valkey.password is not None
    assert settings.valkey.password.get_secret_value() == "valkey-pw"
    assert settings.graph.password is not None
    assert settings.graph.password.get_secret_value() == "graph-pw"
    # The environment wins over a file (an override for one pod, say).
    env = {"JETSOURCE_SECRETS_DIR": str(secrets), "JETSOURCE_NATS__PASSWORD": "from-env"}
    overridden = loaded(monkeypatch, QuerySettings, env)
    assert overridden.nats.password is not None
    assert overridden.nats.password.get_secret_value() == "from-env"


def test_the_charts_secret_keys_are_the_file_names_the_settings_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {
        "secrets": {
            "natsPassword": "n-pw",
            "natsToken": "n-token",
            "valkeyPassword": "v-pw",
            "graphPassword": "g-pw",
        }
    }
    secret = by_kind(manifests(render(values)), "Secret")["js-jetsource"]
    files = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    secrets = mount_like_kubernetes(tmp_path / "secrets", files)
    settings = loaded(monkeypatch, PublisherSettings, {"JETSOURCE_SECRETS_DIR": str(secrets)})
    read = {
        "natsPassword": settings.nats.password,
        "natsToken": settings.nats.token,
        "valkeyPassword": settings.valkey.password,
        "graphPassword": settings.graph.password,
    }
    assert {k: v.get_secret_value() if v else None for k, v in read.items()} == values["secrets"]


def test_without_the_mount_nothing_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = loaded(
        monkeypatch, QuerySettings, {"JETSOURCE_SECRETS_DIR": str(tmp_path / "absent")}
    )
    assert settings.nats.password is None and settings.graph.password is None
