"""The four services as real processes for e2e, security and chaos tests.

Settings objects become what an operator would write: ``JETSOURCE_*`` environment
variables, and secrets as files in a secrets directory (``JETSOURCE_SECRETS_DIR``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.servers import EmbeddedServer, free_port
from jetsource.devstack.services import GrpcService, WorkerService


def _flatten(value: Any, name: str, env: dict[str, str], secrets: dict[str, str]) -> None:
    if isinstance(value, BaseModel):
        for key in type(value).model_fields:
            _flatten(getattr(value, key), f"{name}__{key}" if name else key, env, secrets)
        return
    if value is None:
        return
    if isinstance(value, SecretStr):
        secrets[name] = value.get_secret_value()
    elif isinstance(value, list) and value and isinstance(value[0], SecretStr):
        secrets[name] = json.dumps([v.get_secret_value() for v in value])
    elif isinstance(value, bool):
        env[name] = "true" if value else "false"
    elif isinstance(value, list | tuple | dict):
        env[name] = json.dumps(value)
    else:
        env[name] = str(value)


def environment(settings: BaseModel, secrets_dir: Path | None = None) -> dict[str, str]:
    """``JETSOURCE_*`` variables for every field of ``settings``; secrets go to files in
    ``secrets_dir`` (named like ``jetsource_nats__password``) when given, else to variables."""
    env: dict[str, str] = {}
    secrets: dict[str, str] = {}
    _flatten(settings, "", env, secrets)
    out = {f"JETSOURCE_{k.upper()}": v for k, v in env.items()}
    if secrets_dir is None:
        out.update({f"JETSOURCE_{k.upper()}": v for k, v in secrets.items()})
        return out
    secrets_dir.mkdir(parents=True, exist_ok=True)
    for key, value in secrets.items():
        path = secrets_dir / f"jetsource_{key.lower()}"
        path.write_text(value)
        path.chmod(0o600)
    out["JETSOURCE_SECRETS_DIR"] = str(secrets_dir)
    return out


SERVICES = {
    "publisher": "jetsource.publisher.server",
    "projector": "jetsource.projector.server",
    "snapshotter": "jetsource.snapshotter.server",
    "query": "jetsource.query.server",
}


@dataclass
class Services:
    """publisher, projector, snapshotter and query as processes on free ports."""

    home: Path
    env: dict[str, str]
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    health_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def configure(
        cls,
        home: Path,
        settings: JetsourceSettings,
        options: dict[str, dict[str, Any]] | None = None,
        secrets_dir: Path | None = None,
        health_ports: bool = False,
    ) -> Services:
        """``settings`` holds the shared part (servers, streams, snapshots, grpc);
        ``options`` each service's own (``{"projector": {...}, "query": {...}}``)."""
        options = {k: dict(v) for k, v in (options or {}).items()}
        ports = {name: free_port() for name in SERVICES}
        health = {n: free_port() for n in ("publisher", "query")} if health_ports else {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
        env.update(environment(settings, secrets_dir))
        for name in ("publisher", "query"):
            options.setdefault(name, {}).update(grpc_port=ports[name], metrics_port=0)
        for name in ("projector", "snapshotter"):
            options.setdefault(name, {}).update(http_port=ports[name])
        for name, values in options.items():
            for key, value in values.items():
                env[f"JETSOURCE_{name.upper()}__{key.upper()}"] = (
                    json.dumps(value) if isinstance(value, list | dict) else str(value)
                )
        return cls(home, env, ports=ports, health_ports=health)

    def server(self, name: str) -> EmbeddedServer:
        env = dict(self.env)
        if name in self.health_ports:
            env["JETSOURCE_GRPC__HEALTH_PORT"] = str(self.health_ports[name])
        kind = WorkerService if name in ("projector", "snapshotter") else GrpcService
        return kind(
            name,
            SERVICES[name],
            self.home / name,
            self.host,
            self.ports[name],
            env=env,
            health_port=self.health_ports.get(name),
        )

    def start(self, name: str, timeout: float = 60.0) -> None:
        server = self.server(name)
        proc = server.start()
        self.procs[name] = proc
        server.wait_ready(proc, timeout)

    def start_all(self, timeout: float = 60.0) -> None:
        for name in SERVICES:
            self.start(name, timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=30)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(name)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def address(self, name: str) -> str:
        return f"{self.host}:{self.ports[name]}"

    def log(self, name: str) -> str:
        path = self.home / name / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot exit
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
