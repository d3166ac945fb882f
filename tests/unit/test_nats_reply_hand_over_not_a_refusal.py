"""A reply the client could not hand over (jsapi.ReplyHandOverError) names the reply's
random inbox subject; one holding "tls" read as NATS refusing this client's certificate
(logged "nats refused this client", and a connect in progress ended in
AccessDeniedError). Now it is told apart before the refusal words are looked for. So is
a permissions violation, which names the subject too."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from nats import errors as nats_errors

from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import bootstrap, jsapi


async def _connected_saying(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, client: type
) -> list[str]:
    """bootstrap.connect with ``client`` as its NATS class: it connects (no
    AccessDeniedError), and what it logged at ERROR is returned."""
    monkeypatch.setattr(bootstrap, "NATS", client)
    monkeypatch.setattr(bootstrap, "survive_a_dead_socket", lambda nc: None)
    with caplog.at_level(logging.ERROR, logger=bootstrap.log.name):
        nc = await bootstrap.connect(JetsourceSettings())  # no AccessDeniedError
    assert isinstance(nc, client)
    return [r.getMessage() for r in caplog.records]


class _Client:
    """A client whose connect reports a lost reply to its error callback, then connects."""

    async def connect(self, **options: Any) -> None:
        lost = jsapi.ReplyHandOverError(b"_INBOX.q7TlsX9.42", RuntimeError("queue closed"))
        await options["error_cb"](lost)


async def test_a_lost_reply_on_an_inbox_holding_tls_is_no_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    said = await _connected_saying(monkeypatch, caplog, _Client)
    assert not any("refused" in s for s in said), said
    assert any("_INBOX.q7TlsX9.42 could not be handed over" in s for s in said), said


class _Denied:
    """A client whose connect reports a permissions violation on an inbox holding
    "tls" (as nats-py words it), then connects."""

    async def connect(self, **options: Any) -> None:
        denied = nats_errors.Error(
            'nats: permissions violation for subscription to "_inbox.q7tlsx9.*"'
        )
        await options["error_cb"](denied)


async def test_a_permissions_violation_on_an_inbox_holding_tls_is_no_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """It was logged "nats refused this client" (the refusal words came first) and
    ended the connect in AccessDeniedError; it is said as the permissions violation it
    is, and the connect goes on."""
    said = await _connected_saying(monkeypatch, caplog, _Denied)
    assert not any(s.startswith("nats refused this client") for s in said), said
    assert any("permissions for this client's user" in s for s in said), said
