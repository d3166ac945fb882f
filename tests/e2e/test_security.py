"""Every service with authentication and TLS on: NATS over TLS with user/password
(publisher, query) and nkey (projector, snapshotter) users, Valkey with an ACL user
(default user off), the graph store with its password, gRPC with mutual TLS and bearer
tokens; every secret from files. Each refuses a client without credentials with a clear
error, and no secret shows up in any service's log (at DEBUG)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import nkeys
import pytest
import valkey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from neo4j import GraphDatabase
from neo4j.exceptions import AuthError
from pydantic import SecretStr

from jetsource.client import ContextClient, QueryClient
from jetsource.core.errors import AccessDeniedError
from jetsource.core.settings import (
    GrpcClientSettings,
    GrpcServerSettings,
    JetsourceSettings,
    NatsSettings,
    ServerTlsSettings,
    TlsSettings,
    ValkeySettings,
)
from jetsource.devstack.servers import NatsServer, ValkeyServer, free_port
from jetsource.eventstore.bootstrap import connect
from tests.infra import Server
from tests.pki import Pki, make_pki
from tests.projector_fixtures import projector_settings
from tests.stack import Services

pytestmark = pytest.mark.e2e

NATS_PASSWORD = "nats-pw-4f1c9e"
VALKEY_PASSWORD = "valkey-pw-77ad02"
TOKENS = ["token-a-5e3b91", "token-b-0c8d44"]


@dataclass
class Secure:
    pki: Pki
    nats_url: str
    nats: NatsServer
    valkey: ValkeyServer
    nkey_seed: bytes
    services: Services
    settings: JetsourceSettings
    graph: Server

    def client(self, token: str | None = TOKENS[0], cert: bool = True) -> GrpcClientSettings:
        return GrpcClientSettings(
            tls=TlsSettings(
                enabled=True,
                ca_file=self.pki.ca,
                cert_file=self.pki.client_cert if cert else None,
                key_file=self.pki.client_key if cert else None,
            ),
            token=None if token is None else SecretStr(token),
        )

    def secrets(self) -> list[str]:
        graph_password = str(self.graph.extra["password"])
        return [NATS_PASSWORD, VALKEY_PASSWORD, *TOKENS, self.nkey_seed.decode(), graph_password]


def _nats_config(pki: Pki, nkey_public: str) -> str:
    return f"""
tls {{
  cert_file: "{pki.server_cert}"
  key_file: "{pki.server_key}"
  ca_file: "{pki.ca}"
  timeout: 2
}}
authorization {{
  users: [
    {{user: "jetsource", password: "{NATS_PASSWORD}"}}
    {{nkey: "{nkey_public}"}}
  ]
}}
"""


@pytest.fixture(scope="module")
def secure(
    tmp_path_factory: pytest.TempPathFactory, graph_server: Server, settings: JetsourceSettings
) -> Iterator[Secure]:
    home = tmp_path_factory.mktemp("secure")
    pki = make_pki(home / "pki")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    nats_server = NatsServer(
        home / "nats",
        port=free_port(),
        monitor_port=free_port(),
        extra_config=_nats_config(pki, public),
    )
    nats_proc = nats_server.start()
    nats_server.wait_ready(nats_proc, 60)
    valkey = ValkeyServer(home / "valkey", port=free_port(), user=("jetsource", VALKEY_PASSWORD))
    valkey_proc = valkey.start()
    valkey.wait_ready(valkey_proc, 60)

    secrets = home / "secrets"
    base = projector_settings(settings, "sec", snapshots={"every": 2})
    shared = JetsourceSettings(
        nats=NatsSettings(
            url=f"tls://127.0.0.1:{nats_server.port}",
            user="jetsource",
            password=SecretStr(NATS_PASSWORD),
            tls=TlsSettings(ca_file=pki.ca),
        ),
        valkey=ValkeySettings(
            url=valkey.address(), username="jetsource", password=SecretStr(VALKEY_PASSWORD)
        ),
        graph=base.graph,
        eventstore=base.eventstore,
        snapshots=base.snapshots,
        grpc=GrpcServerSettings(
            tls=ServerTlsSettings(
                cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca
            ),
            auth_tokens=[SecretStr(t) for t in TOKENS],
            max_message_bytes=256 * 1024,
            max_inflight_per_client=3,
        ),
        log_level="DEBUG",
    )
    names = ("dlq_stream", "dlq_subject_prefix", "control_bucket", "valkey_prefix")
    projector = {k: getattr(base.projector, k) for k in (*names, "graph_label_prefix")}
    # The workers use the nkey user: no password variable, the seed from a file.
    seed_file = secrets / "nats.nk"
    secrets.mkdir(parents=True)
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    services = Services.configure(
        home / "services",
        shared,
        options={
            "projector": {**projector, "ack_wait_s": 5},
            "snapshotter": {**projector, "ack_wait_s": 5},
            "query": {},
        },
        secrets_dir=secrets,
        health_ports=True,
    )
    worker_env = {
        "JETSOURCE_NATS__USER": "",
        "JETSOURCE_NATS__NKEY_SEED_FILE": str(seed_file),
    }
    # The secrets dir holds nats__password for the gRPC services; the workers get an
    # environment that overrides it (environment wins over files) with nkey auth.
    services_env = dict(services.env)
    s = Secure(
        pki,
        shared.nats.url or "",
        nats_server,
        valkey,
        seed,
        services,
        shared,
        graph_server,
    )
    try:
        for name in ("publisher", "projector", "snapshotter", "query"):
            if name in ("projector", "snapshotter"):
                services.env = {**services_env, **worker_env, "JETSOURCE_NATS__PASSWORD": ""}
            else:
                services.env = services_env
            services.start(name)
        services.env = services_env
        yield s
    finally:
        services.stop_all()
        for proc in (nats_proc, valkey_proc):
            proc.terminate()
            proc.wait(timeout=20)


async def test_every_service_works_with_auth_and_tls_on(secure: Secure) -> None:
    publisher, query = secure.services.address("publisher"), secure.services.address("query")
    async with (
        ContextClient(publisher, security=secure.client()) as commands,
        QueryClient(query, security=secure.client()) as reads,
    ):
        r = await commands.create_context("sec-1", title="Secure story")
        for i in range(3):
            r = await commands.add_decision("sec-1", f"d{i}", f"Decision {i}")
        now = await reads.get_context("sec-1", min_version=r.version, strict=True)
        assert now.context.version == 4 and len(now.context.decisions) == 3
        # Projector (Valkey over ACL, graph with its password) and snapshotter (NATS nkey).
        for _ in range(100):
            listed = await reads.list_contexts(page_size=100)
            try:
                nodes = len((await reads.graph("sec-1", depth=2)).nodes)
            except grpc.aio.AioRpcError as exc:  # not in the graph model yet
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
                nodes = 0
            if any(c.context_id == "sec-1" for c in listed.contexts) and nodes >= 4:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("read models did not follow")
        history = await reads.at_version("sec-1", 3)
        assert history.context.version == 3
    nc = await connect(_nats_settings(secure))
    try:
        info = await nc.jetstream().stream_info(secure.settings.snapshots.stream)
        assert info.state.messages >= 1  # the snapshotter wrote through its nkey login
    finally:
        await nc.close()
    async with httpx.AsyncClient(timeout=5) as http:
        for worker in ("projector", "snapshotter"):
            health = await http.get(f"http://{secure.services.address(worker)}/healthz")
            assert health.status_code == 200, worker


def _nats_settings(secure: Secure, **changes: object) -> JetsourceSettings:
    values = {**secure.settings.nats.model_dump(), **changes}
    return JetsourceSettings(nats=NatsSettings.model_validate(values))


async def test_grpc_refuses_clients_without_token_or_certificate(secure: Secure) -> None:
    target = secure.services.address("publisher")
    for security, code, words in [
        (secure.client(token=None), grpc.StatusCode.UNAUTHENTICATED, "bearer token"),
        (secure.client(token="wrong"), grpc.StatusCode.UNAUTHENTICATED, "bearer token"),
        (secure.client(cert=False), grpc.StatusCode.UNAVAILABLE, ""),  # mutual TLS
        (GrpcClientSettings(token=SecretStr(TOKENS[0])), grpc.StatusCode.UNAVAILABLE, ""),  # no TLS
    ]:
        async with ContextClient(target, timeout=5, security=security) as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.create_context("sec-refused", title="no")
        assert refused.value.code() == code, security
        assert words in (refused.value.details() or "")
    # A certificate from another CA is refused as well.
    stranger = secure.client()
    stranger.tls.cert_file, stranger.tls.key_file = (
        secure.pki.stranger_cert,
        secure.pki.stranger_key,
    )
    async with QueryClient(secure.services.address("query"), security=stranger) as q:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await q.get_context("sec-1")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # Nothing was written by the refused calls; probes still see health in plain text.
    async with QueryClient(secure.services.address("query"), security=secure.client()) as q:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await q.get_context("sec-refused")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    for name, port in secure.services.health_ports.items():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_one_client_cannot_take_every_slot_and_big_messages_are_refused(
    secure: Secure,
) -> None:
    query = secure.services.address("query")
    async with (
        QueryClient(query, timeout=30, security=secure.client(TOKENS[0])) as greedy,
        QueryClient(query, security=secure.client(TOKENS[1])) as polite,
    ):
        await polite.get_context("sec-1")
        watches = [greedy.watch("sec-1", from_version=1) for _ in range(3)]
        for w in watches:  # each holds a slot until cancelled
            await w.read()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await greedy.get_context("sec-1")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "in flight" in (refused.value.details() or "")
        assert (await polite.get_context("sec-1")).context.version >= 4  # still served
        for w in watches:
            w.cancel()
        await asyncio.sleep(0.2)
        assert (await greedy.get_context("sec-1")).context.version >= 4  # slots freed
    async with ContextClient(
        secure.services.address("publisher"), security=secure.client()
    ) as commands:
        with pytest.raises(grpc.aio.AioRpcError) as big:
            await commands.add_decision("sec-1", "huge", "Huge", body="x" * 300_000)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with QueryClient(query, security=secure.client()) as q:
        assert (await q.get_context("sec-1")).context.version == 4  # nothing appended


async def test_nats_valkey_and_graph_refuse_clients_without_credentials(secure: Secure) -> None:
    refusals: list[tuple[dict[str, object], str]] = [
        ({"user": None, "password": None}, "Authorization Violation"),
        ({"password": "wrong"}, "Authorization Violation"),
        ({"tls": TlsSettings()}, "refused this client"),  # TLS required, CA not trusted
    ]
    for changes, words in refusals:
        with pytest.raises(AccessDeniedError) as denied:
            await asyncio.wait_for(connect(_nats_settings(secure, **changes)), 20)
        assert words in str(denied.value)
        assert NATS_PASSWORD not in str(denied.value)
    plain = valkey.Valkey(host="127.0.0.1", port=secure.valkey.port, socket_timeout=3)
    with pytest.raises(valkey.exceptions.AuthenticationError):
        plain.ping()
    plain.close()
    graph = secure.graph
    with (
        GraphDatabase.driver(graph.url, auth=(graph.extra["user"], "wrong")) as driver,
        pytest.raises(AuthError),
    ):
        driver.verify_connectivity()


def test_a_service_with_refused_credentials_stops_with_a_clear_error(
    secure: Secure, tmp_path: Path
) -> None:
    env = {
        **secure.services.env,
        "JETSOURCE_NATS__PASSWORD": "wrong-password-123",
        "JETSOURCE_PUBLISHER__GRPC_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "jetsource.publisher.server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "publisher cannot start: NATS at" in done.stderr
    assert "Authorization Violation" in done.stderr
    assert "wrong-password-123" not in done.stderr
    env = {**secure.services.env, "JETSOURCE_VALKEY__PASSWORD": "wrong-password-456"}
    env["JETSOURCE_PROJECTOR__HTTP_PORT"] = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "jetsource.projector.server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "projector cannot start: Valkey at" in done.stderr
    assert "wrong-password-456" not in done.stderr


def test_no_secret_appears_in_any_log(secure: Secure) -> None:
    # Runs last in this module: the logs hold every call above, at DEBUG.
    logs = {name: secure.services.log(name) for name in secure.services.procs}
    assert all(len(text) > 0 for text in logs.values())
    for name, text in logs.items():
        for secret in secure.secrets():
            assert secret not in text, f"a secret appears in the {name} log"
    # Settings print their secrets masked.
    assert NATS_PASSWORD not in repr(secure.settings)
    assert all(t not in repr(secure.settings) for t in TOKENS)
