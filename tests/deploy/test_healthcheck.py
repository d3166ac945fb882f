"""deploy/healthcheck.py, the probe compose and `helm test` run in the image, against a
real grpc.health.v1 server and a real HTTP server."""

from __future__ import annotations

import http.server
import importlib.util
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jetsource.devstack.servers import free_port
from tests.deploy.chart import ROOT

SERVICE = "jetsource.context.v1.ContextCommandService"


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy/healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def grpc_health() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    for name in ("", SERVICE):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_grpc_probe_passes_on_serving_and_fails_otherwise(
    probe: ModuleType,
    grpc_health: tuple[str, health.HealthServicer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, servicer = grpc_health
    main: Callable[[list[str]], int] = probe.main
    assert main(["grpc", target]) == 0
    assert main(["grpc", target, "--service", SERVICE]) == 0
    servicer.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["grpc", target, "--service", SERVICE]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    assert main(["grpc", target, "--service", "no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["grpc", f"127.0.0.1:{free_port()}", "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/healthz" else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok\n" if code == 200 else b"unhealthy\n")

    def log_message(self, *args: object) -> None:
        pass


def test_http_probe_passes_on_200_only(
    probe: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert probe.main(["http", f"{base}/healthz"]) == 0
        assert probe.main(["http", f"{base}/unhealthy"]) == 1
        assert "HTTP 503" in capsys.readouterr().err
    finally:
        server.shutdown()
    assert probe.main(["http", f"http://127.0.0.1:{free_port()}/healthz", "--timeout", "1"]) == 1
