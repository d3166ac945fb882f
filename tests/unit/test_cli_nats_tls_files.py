"""The CLI with NATS TLS files that do not load (a CA file that is no PEM, a key that is
not the certificate's): it said "unavailable" (exit 3, retry) naming no setting, the
error of ssl's own. Now each group says it as it says NATS refusing this client's
certificate: exit 1 naming the TLS settings (a service stops at start earlier, by
``tls_problems``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetsource.core.errors import AccessDeniedError
from jetsource.core.settings import JetsourceSettings, NatsSettings, TlsSettings
from jetsource.eventstore.bootstrap import nats_options


def test_tls_files_that_do_not_load_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    settings = JetsourceSettings(nats=NatsSettings(tls=TlsSettings(ca_file=junk)))
    with pytest.raises(AccessDeniedError) as refused:
        nats_options(settings)
    assert "JETSOURCE_NATS__TLS__CA_FILE" in str(refused.value)
