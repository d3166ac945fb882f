"""A secret file whose name is no setting (a misspelt key of the chart's Secret or of
secrets.existingSecret: ``jetsource_grpc_auth_tokens`` for ``jetsource_grpc__auth_tokens``)
is named at start, with the closest real name, as a misspelt variable is: it was ignored
in silence, so a service ran asking no bearer token."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jetsource.core import runner
from jetsource.core.settings import unknown_secret_files
from jetsource.publisher.settings import PublisherSettings
from tests.deploy.test_secrets_mount import mount_like_kubernetes


def test_a_misspelt_secret_file_is_named_with_the_real_one(tmp_path: Path) -> None:
    secrets = mount_like_kubernetes(
        tmp_path / "secrets",
        {
            "jetsource_grpc_auth_tokens": '["t1"]',  # one '_': sets nothing
            "jetsource_nats__pasword": "pw",
            # real settings, of this service or another (one Secret for every pod)
            "jetsource_nats__password": "pw",
            "jetsource_client__token": "t1",
            "jetsource_ingest__instances": "{}",
            # not named like a setting: a certificate a ..._FILE setting points at
            "ca.pem": "-----BEGIN CERTIFICATE-----",
        },
    )
    assert unknown_secret_files(PublisherSettings, secrets) == [
        f"secrets file {secrets}/jetsource_grpc_auth_tokens is not a setting and is ignored "
        "(did you mean jetsource_grpc__auth_tokens?)",
        f"secrets file {secrets}/jetsource_nats__pasword is not a setting and is ignored "
        "(did you mean jetsource_nats__password?)",
    ]
    assert unknown_secret_files(PublisherSettings, tmp_path / "absent") == []


def test_a_service_warns_of_it_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = mount_like_kubernetes(tmp_path / "secrets", {"jetsource_grpc_auth_tokens": "[]"})
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", str(secrets))
    warned: list[str] = []
    monkeypatch.setattr(
        logging.getLogger("jetsource.publisher"),
        "warning",
        lambda fmt, *args: warned.append(fmt % args),
    )
    settings = runner.load_settings("publisher", PublisherSettings)
    assert settings.grpc.auth_tokens == []
    assert warned == [
        f"secrets file {secrets}/jetsource_grpc_auth_tokens is not a setting and is ignored "
        "(did you mean jetsource_grpc__auth_tokens?)"
    ]
