"""devstack.probes.unreachable: the port a URL without one means is its scheme's, as
nats-py connects it (ws 80, wss 443, nats and tls 4222): a healthy ``wss://host`` was
probed on 4222 and shown as down (``infra status`` exit 1). A URL it cannot read is
named without its credentials."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from jetsource.devstack import probes


@pytest.fixture
def dialled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The (host, port) each probe dialled; every dial is answered."""
    calls: list[tuple[str, int]] = []

    class _Sock:
        def close(self) -> None:
            pass

    def connect(address: tuple[str, int], *_a: Any, **_k: Any) -> _Sock:
        calls.append(address)
        return _Sock()

    monkeypatch.setattr(socket, "create_connection", connect)
    return calls


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("wss://nats.example.com", 443),
        ("ws://nats.example.com", 80),
        ("WSS://nats.example.com", 443),
        ("nats://nats.example.com", 4222),
        ("tls://nats.example.com", 4222),
        ("nats.example.com", 4222),
        ("wss://nats.example.com:8443", 8443),
        ("wss://u:p@nats.example.com/", 443),
    ],
)
def test_a_url_without_a_port_is_probed_on_its_schemes_port(
    dialled: list[tuple[str, int]], url: str, port: int
) -> None:
    assert probes.unreachable(url) is None
    assert dialled == [("nats.example.com", port)]


def test_an_unreadable_url_is_named_without_its_credentials(
    dialled: list[tuple[str, int]],
) -> None:
    why = probes.unreachable("nats://admin:s3cret@host:99999")
    assert why is not None and "s3cret" not in why and "admin" not in why, why
    assert "host:99999" in why and "Port out of range" in why, why
    assert dialled == []
