"""Credentials a provider puts in a webhook's body or query string, taken out before the
request is archived (``OMNI_RAW`` keeps records for as long as its retention says, and
``GetEvent`` with ``include_raw`` and ``jetsource omni raw show`` answer them).

Evolution API sends its instance's ``apikey`` in every webhook body; Discord's
interactions carry the interaction's ``token`` (good for 15 minutes to answer as the
application); a forwarder may add others. Each string value of an object key named in
``SECRET_KEYS`` (compared without case, at any depth) is replaced by ``"[redacted]"``, and
so is the value of a query parameter of such a name. Everything else of the body is kept
byte for byte (spacing, key order, escapes, numbers as written): a replayed body is the
provider's with those values replaced, and gives the same events but for what a redacted
value fed (an interaction's ``metadata.extra["interaction_token"]`` is ``[redacted]``).
The record's
``body_redacted`` lists what was replaced (the fields' paths, as a refusal names them:
``apikey``, ``data.token``; the key alone when the body is no JSON, a refused one cut
short). A value is only found this way where the key is written as plain text; a body
spelling a key with ``\\u`` escapes is read as JSON and written again whole (compact,
keys in their order) with its values replaced: the one case where more than the values
changes. Bodies with no such key are archived as they came.

A signed body that holds one no longer matches its signature once redacted (the
headers' signatures are kept): Discord's interactions, Ed25519-signed, carry ``token``,
so their archived body does not verify; the record's ``body_sha256``, the digest of the
body as received, ties it to the signed original. (WhatsApp Cloud's bodies carry none.)
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_plus

# Key names (compared in lower case) whose string values are credentials.
SECRET_KEYS = frozenset(
    {
        "apikey",
        "api_key",
        "x-api-key",
        "token",
        "access_token",
        "refresh_token",
        "verify_token",
        "hub.verify_token",
        "client_secret",
        "secret",
        "password",
        "authorization",
    }
)
MARK = "[redacted]"
_MARK_JSON = json.dumps(MARK).encode()

# A key named in SECRET_KEYS and its colon. For JSON text this is a key and nothing else
# when its opening quote is not escaped (an even run of backslashes before it): inside a
# string every quote is escaped, and after a string's closing quote no letter may come.
_KEY = re.compile(
    rb'"(' + b"|".join(re.escape(k.encode()) for k in sorted(SECRET_KEYS)) + rb')"\s*:\s*',
    re.IGNORECASE,
)
# A JSON string token from its opening quote; the second: one cut short by the body's end.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_CUT_STRING = re.compile(rb'"(?:[^"\\]|\\.)*\\?\Z', re.DOTALL)
# An escape of a character a key of SECRET_KEYS is made of (U+0020 to U+007F): how
# a key hides from _KEY. Other escapes (an emoji's surrogates) cannot spell one.
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]")


def _escaped(body: bytes, at: int) -> bool:
    n = 0
    while at - n - 1 >= 0 and body[at - n - 1] == 0x5C:  # backslash
        n += 1
    return n % 2 == 1


def body(raw: bytes) -> tuple[bytes, list[str]]:
    """``raw`` with every secret value replaced, and what was replaced (see the module's
    docstring); ``raw`` itself and [] when it holds none."""
    out = bytearray()
    keys: list[str] = []
    last = 0
    for m in _KEY.finditer(raw):
        if m.start() < last or _escaped(raw, m.start()):
            continue
        at = m.end()
        value = _STRING.match(raw, at) or _CUT_STRING.match(raw, at)
        if value is None:
            continue  # a number, an object, ...: not a credential written as text
        out += raw[last:at] + _MARK_JSON
        last = value.end()
        keys.append(m.group(1).decode())
    redacted = bytes(out + raw[last:]) if keys else raw
    if not keys and _ASCII_ESCAPE.search(raw) is None:
        return raw, []
    try:
        parsed = json.loads(redacted)
    except (ValueError, RecursionError):
        return redacted, keys  # no JSON (refused, cut short): the keys found
    paths: list[str] = []
    if _replace(parsed, "", paths, only_left=True):
        # A key spelt with escapes, which the plain-text search cannot see.
        paths = []
        _replace(parsed, "", paths, only_left=False)
        text = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))
        try:
            return text.encode("utf-8"), paths
        except UnicodeEncodeError:
            # A lone surrogate (written "\\ud800" in the body): kept as that escape,
            # never as bytes that are no UTF-8.
            return json.dumps(parsed, separators=(",", ":")).encode(), paths
    return redacted, paths


def _replace(value: Any, path: str, paths: list[str], *, only_left: bool) -> bool:
    """Walk ``value``: list each secret key's path in ``paths``; True when one still
    holds a credential (only_left) or replace it (not only_left)."""
    left = False
    todo: list[tuple[Any, str]] = [(value, path)]
    while todo:
        node, where = todo.pop()
        if isinstance(node, dict):
            items = []
            for k, v in node.items():
                at = f"{where}.{k}" if where else str(k)
                if isinstance(k, str) and k.lower() in SECRET_KEYS and isinstance(v, str):
                    paths.append(at)
                    if v != MARK:
                        left = True
                        if not only_left:
                            node[k] = MARK
                    continue
                items.append((v, at))
            todo.extend(reversed(items))
        elif isinstance(node, list):
            todo.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(node))))
    return left


# What a record lists of what was redacted: the first LISTED paths, each cut to
# LISTED_CHARS (a body may hold a secret key in each of 100,000 objects, under keys of
# any length), and how many more.
LISTED, LISTED_CHARS = 100, 200


def printable(path: str) -> str:
    """``path`` as a protobuf string can hold it: a key may hold a lone surrogate
    (``"\\ud800"`` in the body), which is no UTF-8 and which protobuf refuses (the record
    was not built: a 500, nothing archived); such a character is written ``\\ud800``."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def listed(paths: list[str]) -> list[str]:
    """``paths`` as a record keeps them (bounded, see LISTED; see printable)."""
    out = [printable(p) for p in paths[:LISTED]]
    out = [p if len(p) <= LISTED_CHARS else f"{p[:LISTED_CHARS]}..." for p in out]
    if len(paths) > LISTED:
        out.append(f"... and {len(paths) - LISTED} more")
    return out


def query(raw: str) -> tuple[str, list[str]]:
    """A query string with the value of each parameter named in SECRET_KEYS replaced
    (``apikey=[redacted]``), and the names replaced."""
    if not raw:
        return raw, []
    parts = raw.split("&")
    names: list[str] = []
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if eq and unquote_plus(name).lower() in SECRET_KEYS:
            parts[i] = f"{name}={MARK}"
            names.append(f"?{unquote_plus(name)}")
    return ("&".join(parts), names) if names else (raw, [])
