"""A reply the client could not hand over (jsapi.ReplyHandOverError) names the reply's
random inbox subject; one holding "tls" read as NATS refusing this client's certificate
(logged "nats refused this client", and a connect in progress ended in
AccessDeniedError). Now it is told apart before the refusal words are looked for."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import bootstrap, jsapi


class _Client:
    """A client whose connect reports a lost reply to its error callback, then connects."""

    async def connect(self, **options: Any) -> None:
        lost = jsapi.ReplyHandOverError(b"_INBOX.q7TlsX9.42", RuntimeError("queue closed"))
        await options["error_cb"](lost)


async def test_a_lost_reply_on_an_inbox_holding_tls_is_no_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bootstrap, "NATS", _Client)
    monkeypatch.setattr(bootstrap, "survive_a_dead_socket", lambda nc: None)
    with caplog.at_level(logging.ERROR, logger=bootstrap.log.name):
        nc = await bootstrap.connect(JetsourceSettings())  # no AccessDeniedError
    assert isinstance(nc, _Client)
    said = [r.getMessage() for r in caplog.records]
    assert not any("refused" in s for s in said), said
    assert any("_INBOX.q7TlsX9.42 could not be handed over" in s for s in said), said
