"""Request authentication of each webhook format. Pure: headers, body and the
instance's secrets in; None (authentic) or the reason it is not."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from jetsource.domains.omni.settings import InstanceConfig

SIGNATURE_HEADERS = {
    "cloud": "x-hub-signature-256",
    "evolution": "apikey",
    "forwarder": "x-jetsource-signature",
}
# Header values never archived as they came (they are the secret itself).
# Proxy-Authorization carries a client's credentials to a proxy (RFC 9110 11.7.2): one
# that passes it on had it archived in the clear.
SECRET_HEADERS = frozenset(
    {"apikey", "authorization", "proxy-authorization", "cookie", "x-api-key"}
)


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: what Meta sends in X-Hub-Signature-256 and the forwarder in
    X-Jetsource-Signature."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def _hmac_problem(header: str, given: str | None, secret: str, body: bytes) -> str | None:
    if not given:
        return f"missing {header} header"
    value = given.strip()
    if "," in value:
        # Headers sent more than once arrive folded, "sha256=<a>, sha256=<b>": which
        # one is meant is not for the receiver to guess.
        return f"{header} was sent more than once (or holds a list); send one sha256=<hex>"
    digest = value.removeprefix("sha256=")
    # Checked to be ASCII hex before it is compared: compare_digest takes only ASCII
    # str (a header of other characters raised TypeError, a 500).
    if digest == value or not digest.isascii() or not _HEX_DIGEST.fullmatch(digest.lower()):
        return f"{header} is not of the form sha256=<64 hex digits>"
    if not hmac.compare_digest(f"sha256={digest.lower()}".encode(), sign(secret, body).encode()):
        return f"{header} does not match the body signed with the instance's secret"
    return None


def check(config: InstanceConfig, headers: Mapping[str, str], body: bytes) -> str | None:
    """Why the request is not authentic, or None. ``headers`` have lower-case names."""
    header = SIGNATURE_HEADERS[config.format]
    given = headers.get(header)
    if config.format == "cloud":
        assert config.app_secret is not None
        return _hmac_problem(header, given, config.app_secret.get_secret_value(), body)
    if config.format == "forwarder":
        assert config.shared_secret is not None
        return _hmac_problem(header, given, config.shared_secret.get_secret_value(), body)
    assert config.api_key is not None
    if not given:
        return "missing apikey header"
    if not hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), config.api_key.get_secret_value().encode()
    ):
        return "apikey header does not match the instance's API key"
    return None


def handshake_problem(
    config: InstanceConfig, mode: str | None, token: str | None
) -> tuple[str, str] | None:
    """Why Meta's GET verification fails, as (field, message), or None: it needs
    ``hub.mode=subscribe`` and the instance's verify token."""
    if config.format != "cloud":
        return "instance", f"a {config.format} instance has no verification handshake"
    if config.verify_token is None:
        return "instance", "the instance has no verify_token configured"
    if not mode:
        return "hub.mode", "hub.mode is missing (Meta sends hub.mode=subscribe)"
    if mode != "subscribe":
        return "hub.mode", "hub.mode is not subscribe"
    if not token:
        return "hub.verify_token", "hub.verify_token is missing"
    # Any characters: compared as UTF-8 bytes (a lone surrogate escaped, never raised).
    given = token.encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, config.verify_token.get_secret_value().encode()):
        return "hub.verify_token", "hub.verify_token is not the instance's verify token"
    return None


def redacted(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: ("[redacted]" if k in SECRET_HEADERS else v) for k, v in headers.items()}
