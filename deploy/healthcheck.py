"""Container health probe for jetsource processes, shipped in the image at
/opt/jetsource/healthcheck.py (docker compose healthchecks, the Helm test pod).

    python /opt/jetsource/healthcheck.py grpc 127.0.0.1:50051 [--service NAME]
    python /opt/jetsource/healthcheck.py http http://127.0.0.1:9102/healthz

Exit 0 when the gRPC health service answers SERVING (grpc.health.v1, as the publisher
and the query service serve it) or the URL answers 200 (the projector's and the
snapshotter's /healthz); exit 1 otherwise, with one line saying why.

gRPC goes over TLS as the jetsource clients do when the client settings say so:
JETSOURCE_CLIENT__TLS__ENABLED, __CA_FILE, __CERT_FILE (+ __KEY_FILE) and
JETSOURCE_CLIENT__SERVER_NAME (the helm test pod reads them from the chart's ConfigMap);
in plain text otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


def _client_tls() -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    """Channel credentials and options from the JETSOURCE_CLIENT__ settings (None: plain
    text), as jetsource's clients read them: TLS is on with ENABLED true or a CA or
    certificate file; the key defaults to the certificate file."""
    import grpc

    env = os.environ
    ca = env.get("JETSOURCE_CLIENT__TLS__CA_FILE")
    cert = env.get("JETSOURCE_CLIENT__TLS__CERT_FILE")
    key = env.get("JETSOURCE_CLIENT__TLS__KEY_FILE") or cert
    enabled = env.get("JETSOURCE_CLIENT__TLS__ENABLED", "").strip().lower()
    if enabled not in ("1", "true", "yes", "on") and not ca and not cert:
        return None, []

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as file:
            return file.read()

    credentials = grpc.ssl_channel_credentials(read(ca), read(key) if cert else None, read(cert))
    name = env.get("JETSOURCE_CLIENT__SERVER_NAME")
    return credentials, [("grpc.ssl_target_name_override", name)] if name else []


def check_grpc(target: str, service: str, timeout: float) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        credentials, options = _client_tls()
    except OSError as exc:
        return f"TLS files of JETSOURCE_CLIENT__TLS__*: {exc}"
    if credentials is None:
        opened = grpc.insecure_channel(target)
    else:
        opened = grpc.secure_channel(target, credentials, options=options)
    with opened as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{target}: {exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return f"{target} {service or '(server)'}: {status}"
    return None


def check_http(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                return f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return f"{url}: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    grpc_check = kinds.add_parser("grpc", help="grpc.health.v1 Check")
    grpc_check.add_argument("target", help="host:port")
    grpc_check.add_argument("--service", default="", help="service name ('' = the server)")
    http_check = kinds.add_parser("http", help="HTTP GET expecting 200")
    http_check.add_argument("url")
    for sub in (grpc_check, http_check):
        sub.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.kind == "grpc":
        problem = check_grpc(args.target, args.service, args.timeout)
    else:
        problem = check_http(args.url, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
