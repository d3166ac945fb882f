from __future__ import annotations

from pathlib import Path

import pytest

from jetsource.core.settings import JetsourceSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("JETSOURCE_"):
            monkeypatch.delenv(key)


def test_defaults_point_at_the_local_devstack() -> None:
    s = JetsourceSettings.load()
    assert s.nats_url() == "nats://127.0.0.1:4222"
    assert s.valkey_url() == "redis://127.0.0.1:6379/0"
    assert s.graph_uri() == "bolt://127.0.0.1:7687"
    assert s.graph_auth() == ("root", "jetsource-dev")


def test_env_prefix_and_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETSOURCE_NATS__URL", "nats://nats.example:4222")
    monkeypatch.setenv("JETSOURCE_NATS__TLS__CA_FILE", "/etc/ca.pem")
    monkeypatch.setenv("JETSOURCE_GRAPH__URI", "neo4j://graph:7687")
    monkeypatch.setenv("JETSOURCE_GRAPH__USER", "neo4j")
    monkeypatch.setenv("JETSOURCE_GRAPH__PASSWORD", "pw")
    s = JetsourceSettings.load()
    assert s.nats_url() == "nats://nats.example:4222"
    assert s.nats.tls.ca_file == Path("/etc/ca.pem") and s.nats.tls.active
    assert s.graph_auth() == ("neo4j", "pw")


def test_secrets_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "jetsource_nats__password").write_text("from-file")
    (tmp_path / "jetsource_valkey__password").write_text("valkey-secret")
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", str(tmp_path))
    s = JetsourceSettings.load()
    assert s.nats.password is not None
    assert s.nats.password.get_secret_value() == "from-file"
    assert s.valkey.password is not None
    assert s.valkey.password.get_secret_value() == "valkey-secret"
    # Secrets never show in reprs (and so never in logs of settings).
    assert "from-file" not in repr(s)


def test_environment_wins_over_secret_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "jetsource_nats__password").write_text("from-file")
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("JETSOURCE_NATS__PASSWORD", "from-env")
    s = JetsourceSettings.load()
    assert s.nats.password is not None and s.nats.password.get_secret_value() == "from-env"
