"""What NATS refused names the settings to change: the TLS files for a certificate or
handshake refusal, the credentials otherwise."""

from __future__ import annotations

import ssl

from jetsource.eventstore.bootstrap import refusal_settings


def test_a_tls_refusal_names_the_tls_files() -> None:
    said = refusal_settings(ssl.SSLCertVerificationError("certificate verify failed"))
    assert "JETSOURCE_NATS__TLS__CA_FILE" in said and "JETSOURCE_NATS__TLS__CERT_FILE" in said
    assert "PASSWORD" not in said
    said = refusal_settings(Exception("nats: TLS required by the server"))
    assert "JETSOURCE_NATS__TLS__CA_FILE" in said


def test_refused_credentials_name_every_way_to_give_them() -> None:
    said = refusal_settings(Exception("nats: 'Authorization Violation'"))
    for setting in ("USER", "PASSWORD", "TOKEN", "CREDS_FILE", "NKEY_SEED_FILE"):
        assert f"JETSOURCE_NATS__{setting}" in said
    assert "TLS" not in said
