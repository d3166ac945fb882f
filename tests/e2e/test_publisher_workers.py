"""The publisher as several worker processes on one port (``publisher.workers``).

Real nats-server, real processes: the supervisor starts two workers sharing the gRPC
port; commands from many clients all land once and in order whichever worker takes
them (both take some); a worker killed with SIGKILL is restarted while clients carry
on; SIGTERM stops every worker. And the other side of SO_REUSEPORT: a second service on
a port in use refuses to start with one clear line (exit 2), where grpc's default would
have bound it silently and handed it half the connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jetsource.client import ContextClient
from jetsource.core.workers import WORKER_METRICS_STEP as STEP
from jetsource.devstack.servers import free_port
from jetsource.devstack.services import GrpcService
from tests.infra import Server

pytestmark = pytest.mark.e2e


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def commands_served(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("jetsource_publisher_commands_total{") and 'outcome="ok"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def free_pair(avoid: int) -> int:
    """A port P with P + 100 free too (worker i serves metrics on P + 100 * i)."""
    for _ in range(100):
        p = free_port()
        if avoid in (p, p + STEP) or p + STEP > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + STEP))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair")


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


async def both_up(
    proc: subprocess.Popen[bytes], metrics: int, probe: Callable[[int], float] = commands_served
) -> bool:
    """Two workers, each answering on its metrics port (served once its gRPC port is
    bound): connections made before the second binds all go to the first."""
    for _ in range(300):
        if len(children(proc.pid)) == 2:
            try:
                await asyncio.to_thread(probe, metrics)
                await asyncio.to_thread(probe, metrics + STEP)
                return True
            except OSError:
                pass
        await asyncio.sleep(0.1)
    return False


def environment(nats: Server, unique: str, port: int, metrics: int, workers: int) -> dict[str, str]:
    return {
        **os.environ,
        "JETSOURCE_NATS__URL": nats.url,
        "JETSOURCE_EVENTSTORE__STREAM": f"CW_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"cw{unique}.events",
        "JETSOURCE_PUBLISHER__GRPC_PORT": str(port),
        "JETSOURCE_PUBLISHER__METRICS_PORT": str(metrics),
        "JETSOURCE_PUBLISHER__WORKERS": str(workers),
        "JETSOURCE_PUBLISHER__SHUTDOWN_GRACE_S": "2",
    }


@pytest.fixture
def pool(
    nats_server: Server, unique: str, tmp_path: Path
) -> Iterator[tuple[GrpcService, subprocess.Popen[bytes], int]]:
    port = free_port()
    metrics = free_pair(avoid=port)
    env = environment(nats_server, unique, port, metrics, 2)
    svc = GrpcService(
        "publisher", "jetsource.publisher.server", tmp_path, "127.0.0.1", port, env=env
    )
    proc = svc.start()
    svc.wait_ready(proc, 60)
    yield svc, proc, metrics
    workers = children(proc.pid)  # before the supervisor goes: then it lists none
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for child in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


async def test_two_workers_share_the_port_and_every_command_lands_once(
    pool: tuple[GrpcService, subprocess.Popen[bytes], int],
) -> None:
    svc, proc, metrics = pool
    assert await both_up(proc, metrics)

    async def client(story: str) -> list[int]:
        async with ContextClient(svc.address(), timeout=30) as c:
            versions = [(await c.create_context(story, story)).version]
            for i in range(10):
                r = await c.add_decision(story, f"d{i}", "t", idempotency_key=f"{story}-{i}")
                versions.append(r.version)
        # The last command again, same key, on a new connection (maybe the other worker,
        # whose cache never saw it): the original result, nothing appended.
        async with ContextClient(svc.address(), timeout=30) as again:
            repeat = await again.add_decision(story, "d9", "t", idempotency_key=f"{story}-9")
            assert (repeat.duplicate, repeat.version) == (True, 11)
        return versions

    stories = [f"w{i}" for i in range(16)]
    results = await asyncio.gather(*(client(s) for s in stories))
    assert all(v == list(range(1, 12)) for v in results)
    served = [commands_served(metrics), commands_served(metrics + STEP)]
    assert sum(served) >= 16 * 11
    assert all(n > 0 for n in served), f"one worker took every connection: {served}"

    # A worker killed with SIGKILL comes back; clients carry on meanwhile.
    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    async with ContextClient(svc.address(), timeout=30) as c:
        for i in range(20):
            await c.add_decision("w0", f"after-{i}", "t")
    assert await both_up(proc, metrics)
    assert victim not in children(proc.pid)

    # SIGTERM stops them all.
    workers = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not [pid for pid in workers if alive(pid)], "a worker outlived its supervisor"


def test_a_port_in_use_is_refused_with_one_clear_line(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    """grpc's default SO_REUSEPORT would let this second publisher bind silently."""
    port = free_port()
    env = environment(nats_server, unique, port, 0, 1)
    first = GrpcService(
        "publisher", "jetsource.publisher.server", tmp_path, "127.0.0.1", port, env=env
    )
    proc = first.start()
    try:
        first.wait_ready(proc, 60)
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "jetsource.publisher.server"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert second.returncode == 2
        err = second.stderr.decode() + second.stdout.decode()
        assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err
        assert "Traceback" not in err
        assert time.monotonic() - started < 30
    finally:
        proc.terminate()
        proc.wait(20)


def test_workers_need_a_fixed_port(nats_server: Server, unique: str) -> None:
    env = environment(nats_server, unique, 0, 0, 2)
    run = subprocess.run(
        [sys.executable, "-m", "jetsource.publisher.server"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 2
    err = run.stderr.decode() + run.stdout.decode()
    assert "JETSOURCE_PUBLISHER__GRPC_PORT" in err and "Traceback" not in err


def test_a_metrics_port_in_use_is_refused_with_one_clear_line(
    nats_server: Server, tmp_path: Path
) -> None:
    """The same for the HTTP side (/metrics, /healthz): the observer, whose metrics port
    another process holds, ends with exit 2 and one line, not a traceback."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        env = {
            **os.environ,
            "JETSOURCE_NATS__URL": nats_server.url,
            "JETSOURCE_OBSERVER__GRPC_PORT": str(free_port()),
            "JETSOURCE_OBSERVER__METRICS_PORT": str(busy.getsockname()[1]),
        }
        run = subprocess.run(
            [sys.executable, "-m", "jetsource.observer.server"],
            env=env,
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
        err = run.stderr.decode() + run.stdout.decode()
        assert run.returncode == 2, err
        assert f"cannot listen on 127.0.0.1:{busy.getsockname()[1]}" in err
        assert "Traceback" not in err
    finally:
        busy.close()
