"""Sessions reach an observer with mutual TLS and bearer tokens on, through the client
settings every jetsource client uses (``JETSOURCE_CLIENT__TLS__...``,
``JETSOURCE_CLIENT__TOKEN``): the emitter (``observer_session``) and ``jetsource
sessions import --observer`` record with them, and fail clearly without them
(UNAUTHENTICATED without the token, UNAVAILABLE in plain text against TLS). The
observer runs in this process on the session's NATS server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.sessions import app
from jetsource.core.settings import (
    GrpcClientSettings,
    GrpcServerSettings,
    NatsSettings,
    ServerTlsSettings,
    TlsSettings,
)
from jetsource.domains.sessions.emit import observer_session
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.observer.server import Observer, build
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from tests.infra import Server
from tests.integration.sessions.test_cli import env_of
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.integration

TOKEN = "sessions-token-3d9a1f"
TS = "2026-01-02T03:04:05.123Z"


@dataclass
class Secured:
    observer: Observer
    pki: Pki

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.observer.port}"

    def client(self, token: str | None = TOKEN) -> GrpcClientSettings:
        return GrpcClientSettings(
            tls=TlsSettings(
                enabled=True,
                ca_file=self.pki.ca,
                cert_file=self.pki.client_cert,
                key_file=self.pki.client_key,
            ),
            token=SecretStr(token) if token else None,
            timeout_s=5.0,
        )

    def env(self, token: bool = True) -> dict[str, str]:
        env = {
            "JETSOURCE_CLIENT__TLS__CA_FILE": str(self.pki.ca),
            "JETSOURCE_CLIENT__TLS__CERT_FILE": str(self.pki.client_cert),
            "JETSOURCE_CLIENT__TLS__KEY_FILE": str(self.pki.client_key),
            "JETSOURCE_CLIENT__TIMEOUT_S": "5",
        }
        if token:
            env["JETSOURCE_CLIENT__TOKEN"] = TOKEN
        return env


@pytest.fixture
def no_client_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No client settings but the test's own: none from this environment, no secrets."""
    import os

    for name in list(os.environ):
        if name.startswith("JETSOURCE_CLIENT__"):
            monkeypatch.delenv(name)
    (tmp_path / "no-secrets").mkdir()
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", str(tmp_path / "no-secrets"))
    yield


@pytest.fixture
async def secured(
    nats_server: Server, tmp_path: Path, no_client_env: None
) -> AsyncIterator[Secured]:
    pki = make_pki(tmp_path / "pki")
    settings = ObserverSettings(
        nats=NatsSettings(url=nats_server.url),
        grpc=GrpcServerSettings(
            tls=ServerTlsSettings(
                cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca
            ),
            auth_tokens=[SecretStr(TOKEN)],
        ),
        observer=ObserverOptions(grpc_port=0, metrics_port=0),
    )
    observer = await build(settings)
    yield Secured(observer, pki)
    await observer.stop(0)


async def _types(observer: Observer, session_id: str) -> list[str]:
    return [r.envelope.event_type for r in await observer.store.read_aggregate(session_id)]


async def test_the_emitter_records_with_the_client_settings(secured: Secured) -> None:
    async with observer_session(secured.target, "scan", client=secured.client()) as s:
        s.emit("level_started", {"level": 0})
    assert s.error is None
    # On the ledger: the session's root process, its event, its end.
    assert await _types(secured.observer, s.id) == [
        "process_started",
        "level_started",
        "process_completed",
    ]


async def test_the_emitter_takes_the_client_settings_from_the_environment(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in secured.env().items():
        monkeypatch.setenv(name, value)
    async with observer_session(secured.target, "scan") as s:
        s.emit("level_started", {"level": 0})
    assert s.error is None
    assert (await _types(secured.observer, s.id))[-1] == "process_completed"


async def test_the_emitter_without_them_fails_clearly(secured: Secured) -> None:
    # TLS but no token: the observer says what to send.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async with observer_session(secured.target, "scan", client=secured.client(token=None)):
            pass
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (refused.value.details() or ""), refused.value.details()
    # No client settings at all (plain text against TLS): the handshake fails.
    with pytest.raises(grpc.aio.AioRpcError) as plain:
        async with observer_session(
            secured.target, "scan", client=GrpcClientSettings(timeout_s=5.0)
        ):
            pass
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE


def _import(env: dict[str, str], path: Path, target: str) -> tuple[int, str, str]:
    runner = CliRunner(env=env)
    result = runner.invoke(
        app, ["import", str(path), "--observer", target, "-o", "json"], catch_exceptions=False
    )
    out.set_mode(None)
    return result.exit_code, result.stdout, result.stderr


async def test_sessions_import_through_the_observer_with_the_client_settings(
    secured: Secured, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    sid = f"s-{uuid.uuid4().hex[:12]}"
    path = tmp_path / "one.jsonl"
    lines = [
        {
            "ts": TS,
            "session": sid,
            "seq": 1,
            "type": "session_started",
            "data": {"command": "scan"},
        },
        {"ts": TS, "session": sid, "seq": 2, "type": "level_started", "data": {"level": 0}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    base = env_of(app_settings)

    code, stdout, stderr = await asyncio.to_thread(
        _import, {**base, **secured.env(token=False)}, path, secured.target
    )
    assert code != 0, stdout
    assert "UNAUTHENTICATED" in stderr and "Traceback" not in stderr + stdout, stderr

    code, stdout, stderr = await asyncio.to_thread(
        _import, {**base, **secured.env()}, path, secured.target
    )
    assert code == 0, stderr
    assert json.loads(stdout) == {"events": 2, "appended": 2}
    assert await _types(secured.observer, sid) == ["process_started", "level_started"]
