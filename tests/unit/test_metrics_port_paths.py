"""The metrics port of the publisher, query, observer and process query services answers
its paths as the projector's and the ingest's ports do: /readyz is the health (it was
the metrics page, 200 through an outage), /livez says the process answers, any other
path is 404 (it was the metrics page too)."""

from __future__ import annotations

import urllib.error
import urllib.request

from jetsource.core.metrics import start_metrics_server
from jetsource.devstack.servers import free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_paths_of_the_metrics_port() -> None:
    state = {"ok": False}
    port = free_port()
    server = start_metrics_server(port, "127.0.0.1", lambda: state["ok"])
    try:
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/readyz") == (503, b"unhealthy\n")
        assert get(f"{base}/healthz?verbose") == (503, b"unhealthy\n")
        assert get(f"{base}/livez") == (200, b"ok\n")  # the process answers
        for path in ("/health", "/readyz/", "/metricsx", "/favicon.ico"):
            status, _ = get(f"{base}{path}")
            assert status == 404, path
        state["ok"] = True
        assert get(f"{base}/readyz") == (200, b"ok\n")
        for path in ("/metrics", "/metrics?name[]=x", "/"):
            status, body = get(f"{base}{path}")
            assert status == 200 and b"# TYPE" in body, path
    finally:
        server.shutdown()
        server.server_close()
