"""What the omni tests share: isolated settings (unique streams, bucket, prefixes),
signed requests, an in-process projector of the omni models, and the ingress as a
real process (``python -m jetsource.ingest.server``) for e2e and chaos tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from jetsource.devstack.servers import free_port
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.domains.omni.settings import InstanceConfig, OmniOptions
from jetsource.domains.omni.signatures import sign
from jetsource.ingest.server import Ingest, build
from jetsource.ingest.settings import IngestOptions, IngestSettings
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.host import ProjectorService
from jetsource.projection.settings import ProjectorOptions
from tests.stack import environment

SECRETS = {
    "acme-cloud": "acme-app-secret",
    "acme-evo": "acme-evolution-api-key",
    "acme-bot": "acme-forwarder-secret",
}
VERIFY_TOKEN = "acme-verify-token"
INSTANCES = {
    "acme-cloud": InstanceConfig(
        provider="whatsapp",
        format="cloud",
        app_secret=SecretStr(SECRETS["acme-cloud"]),
        verify_token=SecretStr(VERIFY_TOKEN),
    ),
    "acme-evo": InstanceConfig(
        provider="whatsapp", format="evolution", api_key=SecretStr(SECRETS["acme-evo"])
    ),
    "acme-bot": InstanceConfig(
        provider="discord", format="forwarder", shared_secret=SecretStr(SECRETS["acme-bot"])
    ),
}
# The route each instance is served on.
PROVIDER = {"acme-cloud": "whatsapp", "acme-evo": "whatsapp", "acme-bot": "discord"}


def omni_settings(nats_url: str, valkey_url: str, unique: str, **ingest: Any) -> IngestSettings:
    from jetsource.core.settings import NatsSettings, ValkeySettings

    options: dict[str, Any] = {"http_port": 0, "grpc_port": 0, "instances": INSTANCES}
    options.update(ingest)
    return IngestSettings(
        nats=NatsSettings(url=nats_url),
        valkey=ValkeySettings(url=valkey_url),
        ingest=IngestOptions(**options),
        omni=OmniOptions(
            events_stream=f"OMNI_{unique}",
            events_subject_prefix=f"omni{unique}.events",
            raw_stream=f"OMNIRAW_{unique}",
            raw_subject_prefix=f"omni{unique}.raw",
            identity_bucket=f"OMNIH_{unique}",
        ),
        projector=ProjectorOptions(
            http_port=0,
            dlq_stream=f"DLQ_{unique}",
            dlq_subject_prefix=f"dlq{unique}",
            control_bucket=f"RM_{unique}",
            valkey_prefix=f"t{unique}",
            backoff_s=[0.05] * 5,
            waiting_delay_s=0.02,
            pull_expires_s=1.0,
            control_poll_s=0.5,
        ),
    )


def headers_for(instance: str, body: bytes) -> dict[str, str]:
    """The headers the provider (or forwarder) of ``instance`` signs a body with."""
    h = {"content-type": "application/json"}
    fmt = INSTANCES[instance].format
    if fmt == "cloud":
        h["x-hub-signature-256"] = sign(SECRETS[instance], body)
    elif fmt == "evolution":
        h["apikey"] = SECRETS[instance]
    else:
        h["x-jetsource-signature"] = sign(SECRETS[instance], body)
    return h


# The keys whose string values the raw archive does not keep (fixtures carry Evolution's
# apikey and interactions' token); written out here, not taken from the ingress's code.
_ARCHIVE_SECRET = re.compile(rb'("(?:apikey|token|messageSecret)"\s*:\s*)"(?:[^"\\]|\\.)*"')


def archived(body: bytes) -> bytes:
    """``body`` as the raw archive keeps it: an ``apikey``, ``token`` or ``messageSecret``
    (Evolution's poll-vote key, a name ending in "secret") string value is
    ``"[redacted]"``, the rest byte for byte (the fixtures hold no other)."""
    return _ARCHIVE_SECRET.sub(rb'\1"[redacted]"', body)


def route(instance: str) -> str:
    return f"/webhooks/{PROVIDER[instance]}/{instance}"


@contextlib.asynccontextmanager
async def ingest_with_limit(settings: IngestSettings, limit: int) -> AsyncIterator[Ingest]:
    """An ingest of ``settings`` whose gRPC message limit (grpc.max_message_bytes) is
    ``limit``, stopped after."""
    limited = settings.model_copy(
        update={"grpc": settings.grpc.model_copy(update={"max_message_bytes": limit})}
    )
    async with running_ingest(limited) as service:
        yield service


@contextlib.asynccontextmanager
async def running_ingest(settings: IngestSettings) -> AsyncIterator[Ingest]:
    """An ingest of ``settings`` in this process, stopped after."""
    service = await build(settings)
    try:
        yield service
    finally:
        await service.stop(0)


SMALL_PAGE = 10
"""The max page size of ``small_pages`` (tests/integration/omni/conftest.py)."""


def handle_names(view: Any) -> list[str]:
    """An IdentityView's handles as ``provider:external_id``, in the order answered."""
    return [f"{h.provider}:{h.external_id}" for h in view.handles]


@contextlib.asynccontextmanager
async def projector(settings: IngestSettings) -> AsyncIterator[Projection]:
    """The omni read models projected in this process (the engine's projector host)."""
    domain = omni_domain(settings.omni)
    p = await open_projection(settings, domains=DomainRegistry([domain]))
    service = ProjectorService(p)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield p
    finally:
        stop.set()
        await task
        for name in p.model_names():
            await p.model(name, 1).drop()
        await p.close()


async def applied(p: Projection, model: str) -> int:
    return (await p.model(model, 1).checkpoint()).applied


async def caught_up(p: Projection, timeout: float = 30.0) -> None:
    """Every omni model's consumer has nothing pending or unacknowledged."""
    started = time.monotonic()
    while True:
        left = {m: await _pending(p, p.spec(m, 1).durable) for m in p.model_names()}
        if not any(left.values()):
            return
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"read models not caught up: {left}")
        await asyncio.sleep(0.05)


async def _pending(p: Projection, durable: str) -> int:
    from jetsource.eventstore import jsapi

    store = p.stores[next(iter(p.stores))]
    try:
        info = await jsapi.consumer_info(store._replies, store.settings.stream, durable, 5.0)
    except Exception:
        return 1
    if info is None:
        return 1
    return int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0))


@dataclass
class IngressProcess:
    """jetsource-ingest as a process on free ports, restartable, killable."""

    settings: IngestSettings
    home: Path
    http_port: int = 0
    grpc_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        s = self.settings.model_copy(
            update={
                "ingest": self.settings.ingest.model_copy(
                    update={
                        "instances": {},
                        "http_port": self.http_port,
                        "grpc_port": self.grpc_port,
                    }
                )
            }
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
        env.update(environment(s))
        env["JETSOURCE_INGEST__INSTANCES"] = json.dumps(
            {
                name: {
                    k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
                    for k, v in c.model_dump().items()
                    if v is not None
                }
                for name, c in self.settings.ingest.instances.items()
            }
        )
        env["JETSOURCE_LOG_JSON"] = "true"
        self.env = env
        self.home.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        log = open(self.home / f"ingest-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jetsource.ingest.server"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.home,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingest exited {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"ingest not ready: {self.log()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.home.glob("ingest-*.log"))
        )
