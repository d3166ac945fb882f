"""Credentials a provider puts in a webhook's body, query string or headers, taken out
before the request is archived (``OMNI_RAW`` keeps records for as long as its retention
says, and ``GetEvent`` with ``include_raw`` and ``jetsource omni raw show`` answer them).

Evolution API sends its instance's ``apikey`` in every webhook body; Discord's
interactions carry the interaction's ``token`` (good for 15 minutes to answer as the
application); a forwarder may add others. One rule of names (``secret_name``) serves
headers, query parameters, form fields and JSON keys alike: without case or the
separators ``-``, ``_``, ``.`` and space, a name is a credential's when it ends in
``token``, ``secret``, ``password``, ``apikey``, ``authorization`` or ``cookie``
(``apikey``, ``api_key``, ``accessToken``, ``clientSecret``, ``x-auth-token``,
``x-webhook-secret``, ``hub.verify_token``, ``Proxy-Authorization``). The value of a
JSON key of such a name, whatever it is (a string, a number, a list, an object), at any
depth, is replaced by ``"[redacted]"``; so is the value of such a query parameter or
field of a form-encoded body (a body that does not start with ``{`` or ``[``).
Everything else of the body is kept byte for byte (spacing, key order, escapes, numbers
as written, a key sent twice): only the values' spans are rewritten, a key spelt with
``\\u`` escapes included. A replayed body is the provider's with those values replaced,
and gives the same events but for what a redacted value fed (an interaction's
``metadata.extra["interaction_token"]`` is ``[redacted]``). The record's
``body_redacted`` lists what was replaced (the fields' paths, as a refusal names them:
``apikey``, ``data.token``, ``?apikey`` for the query; a body that is no JSON, one cut
short, is read as far as it goes). Bodies with no such key are archived as they came.

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

# A name (a header's, a query parameter's, a JSON key's) whose value is a credential,
# compared without case or the separators below.
SECRET_SUFFIXES = ("token", "secret", "password", "apikey", "authorization", "cookie")
_SEPARATORS = str.maketrans("", "", "-_. ")
MARK = "[redacted]"
_MARK_JSON = json.dumps(MARK).encode()


def secret_name(name: str) -> bool:
    """Whether the value of a header, query parameter, form field or JSON key named
    ``name`` is a credential (see the module's docstring)."""
    return name.lower().translate(_SEPARATORS).endswith(SECRET_SUFFIXES)


# Whether a body may hold such a name at all: its letters with a separator or none
# between them, or an escape (a key may spell one with escapes). Most bodies hold none
# and are archived without being read further.
_MAYBE = re.compile(
    b"|".join(b"[-_. ]?".join(re.escape(bytes([c])) for c in w.encode()) for w in SECRET_SUFFIXES)
    + rb"|\\u",
    re.IGNORECASE,
)
# The tokens of JSON text, read leniently (a body refused as no JSON is redacted too):
# a string (or one cut short by the body's end), a structural character, a run of
# anything else (a number, a literal, garbage); white space is passed over.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[{}\[\]:,]|[^"{}\[\]:,\s]+', re.DOTALL)


def _key(token: bytes) -> str:
    try:
        key = json.loads(token)
    except ValueError:  # cut short, a bad escape, no UTF-8
        return token[1:].rstrip(b'"').decode("utf-8", "replace")
    return key if isinstance(key, str) else ""


def body(raw: bytes) -> tuple[bytes, list[str]]:
    """``raw`` with every secret value replaced, and what was replaced (see the module's
    docstring); ``raw`` itself and [] when it holds none."""
    first = raw.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()[:1]  # past a UTF-8 BOM
    if first not in (b"{", b"["):
        text, names = _form(raw.decode("latin-1"))
        return (text.encode("latin-1"), names) if names else (raw, [])
    if _MAYBE.search(raw) is None:
        return raw, []
    out = bytearray()
    paths: list[str] = []
    last = 0
    # Each open container: [is an object, its current key (the token, bytes) or index,
    # a key is expected, the current key is a credential's].
    stack: list[list[Any]] = []
    top: list[Any] | None = None
    tokens = _TOKEN.finditer(raw)
    for m in tokens:
        t = m.group()
        c = t[0]
        if c == 0x2C:  # ,
            if top is not None:
                if top[0]:
                    top[2] = True
                else:
                    top[1] += 1
            continue
        if c == 0x3A:  # :
            continue
        if c == 0x7D or c == 0x5D:  # } ]
            if stack:
                stack.pop()
                top = stack[-1] if stack else None
            continue
        if top is not None and top[0]:
            if top[2]:
                # A key (or, in a body that is no JSON, whatever stands there).
                top[1], top[2] = t, False
                top[3] = c == 0x22 and _MAYBE.search(t) is not None and secret_name(_key(t))
                continue
            if top[3]:
                # The value of a credential's key, whatever it is.
                end = m.end()
                if c == 0x7B or c == 0x5B:  # { [
                    end = len(raw)
                    depth = 1
                    for inner in tokens:
                        ic = inner.group()[0]
                        if ic == 0x7B or ic == 0x5B:
                            depth += 1
                        elif ic == 0x7D or ic == 0x5D:
                            depth -= 1
                            if depth == 0:
                                end = inner.end()
                                break
                out += raw[last : m.start()] + _MARK_JSON
                last = end
                paths.append(_path(stack))
                top[3] = False  # its value is had: a second value is no credential's
                continue
        if c == 0x7B:  # {
            top = [True, b"", True, False]
            stack.append(top)
        elif c == 0x5B:  # [
            top = [False, 0, False, False]
            stack.append(top)
    if not paths:
        return raw, []
    return bytes(out + raw[last:]), paths


def _path(stack: list[list[Any]]) -> str:
    """The path of the value of the innermost key, as a refusal names it."""
    path = ""
    for is_object, at, _, _ in stack:
        if is_object:
            key = _key(at) if at[:1] == b'"' else ""
            path = f"{path}.{key}" if path else key
        else:
            path = f"{path}[{at}]"
    return path


def _form(raw: str) -> tuple[str, list[str]]:
    """``name=value&...`` with the value of each field of a secret name replaced, and
    the names replaced."""
    if "=" not in raw:
        return raw, []
    parts = raw.split("&")
    names: list[str] = []
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if eq and secret_name(unquote_plus(name)):
            parts[i] = f"{name}={MARK}"
            names.append(unquote_plus(name))
    return ("&".join(parts), names) if names else (raw, [])


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
    """A query string with the value of each parameter of a secret name replaced
    (``apikey=[redacted]``), and the names replaced (``?apikey``)."""
    text, names = _form(raw)
    return text, [f"?{n}" for n in names]
