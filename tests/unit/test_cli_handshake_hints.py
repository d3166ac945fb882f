"""A port that takes connections where no gRPC connection comes up (TLS on one side
only, a certificate refused either way, another program on the port) was reported as
"not reachable (set JETSOURCE_CLIENT__PUBLISHER ...)": the address, which was right, was
named and TLS was not. The CLI now says the port answers and what to check."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jetsource.cli.app import app


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A port that accepts TCP connections (the kernel's backlog) and never speaks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("tls", "says"),
    [
        ({}, "if it speaks TLS, set JETSOURCE_CLIENT__TLS__ENABLED=true"),
        ({"JETSOURCE_CLIENT__TLS__ENABLED": "true"}, "JETSOURCE_CLIENT__TLS__CA_FILE"),
    ],
    ids=["plain", "tls"],
)
def test_a_port_that_answers_without_grpc_names_tls_not_the_address(
    silent_port: str, tls: dict[str, str], says: str
) -> None:
    env = {
        "JETSOURCE_CLIENT__PUBLISHER": silent_port,
        "JETSOURCE_CLIENT__CONNECT_TIMEOUT_S": "0.3",
        "JETSOURCE_SECRETS_DIR": "/nonexistent-secrets",
        **tls,
    }
    r = CliRunner().invoke(app, ["ctx", "create", "s", "--title", "t"], env=env)
    assert r.exit_code == 3, r.output
    assert f"publisher at {silent_port} takes connections but no gRPC" in r.output, r.output
    assert says in r.output, r.output
    assert "JETSOURCE_CLIENT__PUBLISHER" in r.output  # still named: it may be another port


@pytest.mark.parametrize("command", [["ctx", "show", "x"], ["process", "list"]])
@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "does not exist"), ("not a certificate\n", "not PEM certificates")],
    ids=["missing", "junk"],
)
def test_client_tls_files_are_checked_before_connecting(
    tmp_path: Path, silent_port: str, command: list[str], content: str | None, why: str
) -> None:
    """A CA file that was not there was INTERNAL "a bug" (FileNotFoundError), one that
    was no PEM "not reachable"; both are a usage error naming the variable."""
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    env = {
        "JETSOURCE_CLIENT__QUERY": silent_port,
        "JETSOURCE_CLIENT__PROCESS_QUERY": silent_port,
        "JETSOURCE_CLIENT__TLS__ENABLED": "true",
        "JETSOURCE_CLIENT__TLS__CA_FILE": str(ca),
        "JETSOURCE_SECRETS_DIR": "/nonexistent-secrets",
    }
    r = CliRunner().invoke(app, command, env=env)
    assert r.exit_code == 2, r.output
    assert f"bad setting: JETSOURCE_CLIENT__TLS__CA_FILE={str(ca)!r}: {why}" in r.output
