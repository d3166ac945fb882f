"""A throwaway certificate authority for the TLS tests: a server certificate for the
loopback names and a client certificate for mutual TLS, written as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # Signed by another CA: valid-looking, but not trusted by our servers.
    stranger_cert: Path
    stranger_key: Path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="jetsource test CA")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("jetsource-client@test")
    stranger = trustme.CA().issue_cert("stranger@test")
    files = {
        "ca": ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "stranger_cert": stranger.cert_chain_pems[0],
        "stranger_key": stranger.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        path = directory / f"{name}.pem"
        blob.write_to_path(str(path))
        path.chmod(0o600)
        paths[name] = path
    return Pki(**paths)
