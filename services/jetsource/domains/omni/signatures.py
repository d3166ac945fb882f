"""Request authentication of each webhook format. Pure: headers, body and the
instance's secrets in; None (authentic) or the reason it is not."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jetsource.domains.omni import redact
from jetsource.domains.omni.settings import InstanceConfig

SIGNATURE_HEADERS = {
    "cloud": "x-hub-signature-256",
    "evolution": "apikey",
    "forwarder": "x-jetsource-signature",
    "interactions": "x-signature-ed25519",
}
# Discord's interactions: the signature above is over this header's value + the body.
TIMESTAMP_HEADER = "x-signature-timestamp"
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


@lru_cache(maxsize=64)
def _verifier(public_key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))


_HEX_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


def _ed25519_problem(
    config: InstanceConfig, headers: Mapping[str, str], body: bytes, now_s: float | None
) -> tuple[str, str] | None:
    """Discord's Interactions Endpoint URL: ``X-Signature-Ed25519`` is the hex of an
    Ed25519 signature of ``X-Signature-Timestamp`` (Unix seconds) + the raw body, made
    with the application's key; ``public_key`` verifies it. A timestamp further than
    ``timestamp_tolerance_s`` from ``now_s`` is refused too (a replayed request)."""
    sig_header = SIGNATURE_HEADERS["interactions"]
    signature = headers.get(sig_header)
    stamp = headers.get(TIMESTAMP_HEADER)
    if not signature:
        return sig_header, f"missing {sig_header} header"
    if not stamp:
        return TIMESTAMP_HEADER, f"missing {TIMESTAMP_HEADER} header"
    for header, value in ((sig_header, signature), (TIMESTAMP_HEADER, stamp)):
        if "," in value:
            return header, f"{header} was sent more than once (or holds a list); send one"
    signature = signature.strip()
    if not signature.isascii() or not _HEX_SIGNATURE.fullmatch(signature):
        return sig_header, f"{sig_header} is not an Ed25519 signature (128 hex digits)"
    stamp = stamp.strip()
    if not stamp.isascii() or not _UNIX_SECONDS.fullmatch(stamp):
        return TIMESTAMP_HEADER, f"{TIMESTAMP_HEADER} is not a time in Unix seconds"
    assert config.public_key is not None
    try:
        _verifier(config.public_key).verify(bytes.fromhex(signature), stamp.encode() + body)
    except InvalidSignature:
        return sig_header, (
            f"{sig_header} does not verify {TIMESTAMP_HEADER} + the body with the "
            "instance's public_key"
        )
    tolerance = config.timestamp_tolerance_s
    now = time.time() if now_s is None else now_s
    if tolerance and abs(now - int(stamp)) > tolerance:
        return TIMESTAMP_HEADER, (
            f"{TIMESTAMP_HEADER} {stamp} is {abs(now - int(stamp)):.0f} s from this "
            f"server's clock; at most {tolerance:g} s is accepted (a replayed request, "
            "or a clock to set right)"
        )
    return None


def problem(
    config: InstanceConfig,
    headers: Mapping[str, str],
    body: bytes,
    now_s: float | None = None,
) -> tuple[str, str] | None:
    """Why the request is not authentic, as (the header to blame, why), or None.
    ``headers`` have lower-case names; ``now_s`` is the time an interaction's timestamp
    is compared with (None: the clock's)."""
    if config.format == "interactions":
        return _ed25519_problem(config, headers, body, now_s)
    header = SIGNATURE_HEADERS[config.format]
    why = _secret_problem(config, header, headers.get(header), body)
    return None if why is None else (header, why)


def _secret_problem(
    config: InstanceConfig, header: str, given: str | None, body: bytes
) -> str | None:
    """Why a request signed with the instance's shared secret (an HMAC, or Evolution's
    API key sent as is) is not authentic, or None."""
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
    """``headers`` with the value of each of SECRET_HEADERS, or of a name redact.py takes
    for a credential's (``token``, ``x-webhook-secret``, ``x-auth-token``: the rule the
    body and query go by), replaced by "[redacted]"."""
    return {
        k: ("[redacted]" if k in SECRET_HEADERS or redact.secret_name(k) else v)
        for k, v in headers.items()
    }
