"""Every service that reads Valkey refuses, at start, credentials Valkey refuses: the
query service and the projector did (Projection.check_access), the process query
service and the ingest started, answered NOT_SERVING / "valkey": false and logged
"valkey does not answer" (ingest: "not reachable") for ever, a wrong password looking
like an outage. Now each raises AccessDeniedError (the runner's exit 2) naming the
settings to check, never the password; a certificate that does not verify against
VALKEY__TLS__CA_FILE likewise; a Valkey that is only down is still waited for."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from jetsource.core.errors import AccessDeniedError
from jetsource.core.settings import JetsourceSettings, TlsSettings, ValkeySettings
from jetsource.devstack.servers import free_port
from jetsource.ingest.server import build as build_ingest
from jetsource.processquery.server import build as build_process_query
from jetsource.projection.valkey import check_valkey_access, connect_valkey, valkey_problem
from tests.integration.omni.harness import omni_settings
from tests.pki import make_pki
from tests.projector_fixtures import process_query_settings, projector_settings

PASSWORD = "valkey-pw-3e9d51"


def _wrong_login(settings: JetsourceSettings) -> ValkeySettings:
    # The session's Valkey has no users but the default one: any username and password
    # are refused (WRONGPASS), as a rotated or mistyped password is.
    return settings.valkey.model_copy(
        update={"username": "nobody", "password": SecretStr(PASSWORD)}
    )


def _refusal_named(exc: AccessDeniedError) -> None:
    message = str(exc)
    assert "refused this client" in message, message
    assert "JETSOURCE_VALKEY__USERNAME and JETSOURCE_VALKEY__PASSWORD" in message
    assert PASSWORD not in message


async def test_the_process_query_service_refuses_a_wrong_valkey_login(
    settings: JetsourceSettings, unique: str
) -> None:
    ps = process_query_settings(projector_settings(settings, unique))
    ps = ps.model_copy(update={"valkey": _wrong_login(settings)})
    with pytest.raises(AccessDeniedError) as refused:
        await build_process_query(ps)
    _refusal_named(refused.value)


async def test_the_ingest_refuses_a_wrong_valkey_login(
    settings: JetsourceSettings, unique: str
) -> None:
    isettings = omni_settings(settings.nats_url(), settings.valkey_url(), unique.upper())
    isettings = isettings.model_copy(update={"valkey": _wrong_login(settings)})
    with pytest.raises(AccessDeniedError) as refused:
        await build_ingest(isettings)
    _refusal_named(refused.value)


@pytest.fixture
async def stranger_tls_port(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[int, Path]]:
    """A TLS server whose certificate no CA of ours signed."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.stranger_cert, pki.stranger_key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, pki.ca
    finally:
        server.close()


async def test_a_certificate_that_does_not_verify_is_refused_naming_the_tls_files(
    settings: JetsourceSettings, stranger_tls_port: tuple[int, Path]
) -> None:
    port, ca = stranger_tls_port
    tls = settings.model_copy(
        update={
            "valkey": ValkeySettings(
                url=f"rediss://127.0.0.1:{port}/0", tls=TlsSettings(enabled=True, ca_file=ca)
            )
        }
    )
    redis = connect_valkey(tls)
    try:
        with pytest.raises(AccessDeniedError) as refused:
            await check_valkey_access(redis, tls)
    finally:
        await redis.aclose()
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert "JETSOURCE_VALKEY__TLS__CA_FILE" in str(refused.value)


async def test_a_valkey_that_is_down_is_waited_for_not_refused(
    settings: JetsourceSettings, caplog: pytest.LogCaptureFixture
) -> None:
    down = settings.model_copy(
        update={"valkey": ValkeySettings(url=f"redis://127.0.0.1:{free_port()}/0")}
    )
    redis = connect_valkey(down)
    started = time.monotonic()
    try:
        await check_valkey_access(redis, down)  # no exception: the service starts
    finally:
        await redis.aclose()
    assert time.monotonic() - started < 3
    assert "valkey not reachable yet" in caplog.text


async def test_health_names_a_refused_login_not_an_outage(settings: JetsourceSettings) -> None:
    """A password rotated under a running process query service or ingest: their health
    said "valkey does not answer" / "not reachable: valkey"; the reason they log now
    (valkey_problem) names the refusal and the settings, and an outage as an outage."""
    wrong = settings.model_copy(update={"valkey": _wrong_login(settings)})
    down = settings.model_copy(
        update={"valkey": ValkeySettings(url=f"redis://127.0.0.1:{free_port()}/0")}
    )
    said = {}
    for name, s in (("good", settings), ("wrong", wrong), ("down", down)):
        redis = connect_valkey(s)
        try:
            said[name] = await valkey_problem(redis, 1.0)
        finally:
            await redis.aclose()
    assert said["good"] is None
    assert said["wrong"] is not None and "refused this client" in said["wrong"]
    assert "JETSOURCE_VALKEY__PASSWORD" in said["wrong"] and PASSWORD not in said["wrong"]
    assert said["down"] is not None and said["down"].startswith("valkey does not answer")
