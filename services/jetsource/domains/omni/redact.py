"""Credentials a provider puts in a webhook's body, query string or headers, taken out
before the request is archived (``OMNI_RAW`` keeps records for as long as its retention
says, and ``GetEvent`` with ``include_raw`` and ``jetsource omni raw show`` answer them).

Evolution API sends its instance's ``apikey`` in every webhook body; Discord's
interactions carry the interaction's ``token`` (good for 15 minutes to answer as the
application); a forwarder may add others. One rule of names (``secret_name``) serves
headers, query parameters, form fields and JSON keys alike: without ASCII case or
the separators ``-``, ``_``, ``.`` and space, a name is a credential's when it ends in
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
body as received, ties it to the signed original (kept for interactions only: for other
bodies it would confirm guesses of a redacted credential). (WhatsApp Cloud's bodies carry
none.)

Reading is linear in the body's size in time and memory: strings' ends are found with
bytes.find, paths are built for the first LISTED values only, and a body nested deeper
than MAX_DEPTH is read flat (``_flat``: its paths are the keys alone).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_plus

# A name (a header's, a query parameter's, a JSON key's) whose value is a credential,
# compared without case or the separators below.
SECRET_SUFFIXES = ("token", "secret", "password", "apikey", "authorization", "cookie")
# ASCII letters to lower case, the separators out: only ASCII is folded (a name spelt
# with U+212A KELVIN SIGN for its k is no credential's name), as _MAYBE folds.
_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "-_. ")
MARK = "[redacted]"
_MARK_JSON = json.dumps(MARK).encode()


def secret_name(name: str) -> bool:
    """Whether the value of a header, query parameter, form field or JSON key named
    ``name`` is a credential (see the module's docstring)."""
    return name.translate(_FOLD).endswith(SECRET_SUFFIXES)


# Whether a body may hold such a name at all: its letters with any run of separators
# between them, or an escape (a key may spell one with escapes); every name secret_name
# takes matches. Most bodies hold none and are archived without being read further.
_MAYBE = re.compile(
    b"|".join(b"[-_. ]*".join(re.escape(bytes([c])) for c in w.encode()) for w in SECRET_SUFFIXES)
    + rb"|\\u",
    re.IGNORECASE,
)
# The next token of JSON text, read leniently (a body refused as no JSON is redacted
# too), white space passed over: a structural character or a string's opening quote
# (group 1), or a run of anything else (group 2: a number, a literal, garbage). A
# string's end is found by _string_end (no regex: a repeat over a string's characters
# kept ~100 bytes of state per byte).
_NEXT = re.compile(rb'\s*(?:([{}\[\]:,"])|([^"{}\[\]:,\s]+))')
# Containers nested deeper than this are not followed (the ingest's JSON parser refuses
# a body nested past ~1000): such a body is read flat (see _flat).
MAX_DEPTH = 512
# A run of brackets, or a quote, while a redacted container is passed over.
_BRACKETS = re.compile(rb'[\[{][\[{\s]*|[\]}][\]}\s]*|"')


def _string_end(raw: bytes, at: int) -> int:
    """Where the string whose opening quote is at ``at`` ends (past its closing quote;
    the body's end for one cut short): the next quote after an even run of backslashes,
    found with bytes.find and the run counted (each byte looked at a bounded number of
    times; a regex repeat over the string kept ~100 bytes of state per byte)."""
    start = at + 1
    while (quote := raw.find(b'"', start)) >= 0:
        run = raw[start:quote]
        if (len(run) - len(run.rstrip(b"\\"))) % 2 == 0:
            return quote + 1
        start = quote + 1
    return len(raw)


def _token(raw: bytes, pos: int) -> tuple[int, int, int] | None:
    """The token from ``pos`` on: its first byte, start and end; None at the end."""
    m = _NEXT.match(raw, pos)
    if m is None:
        return None  # white space to the end
    if m.start(1) >= 0:
        start = m.start(1)
        c = raw[start]
        return c, start, (_string_end(raw, start) if c == 0x22 else start + 1)
    return raw[m.start(2)], m.start(2), m.end(2)


def _container_end(raw: bytes, pos: int) -> int:
    """Where the container opened just before ``pos`` ends (past its closing bracket;
    the body's end for one cut short), strings passed over."""
    depth = 1
    while (m := _BRACKETS.search(raw, pos)) is not None:
        c = raw[m.start()]
        if c == 0x22:
            pos = _string_end(raw, m.start())
            continue
        run = m.group()
        if c == 0x5B or c == 0x7B:  # [ {
            depth += run.count(b"[") + run.count(b"{")
            pos = m.end()
            continue
        for i, b in enumerate(run):  # ] }, white space
            if b == 0x5D or b == 0x7D:
                depth -= 1
                if depth == 0:
                    return m.start() + i + 1
        pos = m.end()
    return len(raw)


def _value_end(raw: bytes, c: int, start: int, end: int) -> int:
    """Where the value whose first token is (c, start, end) ends."""
    return _container_end(raw, end) if c == 0x7B or c == 0x5B else end


def _key(token: bytes) -> str:
    if len(token) > 4 * LISTED_CHARS:
        token = token[: 4 * LISTED_CHARS]  # only a path's first LISTED_CHARS are kept
    try:
        key = json.loads(token)
    except ValueError:  # cut short, a bad escape, no UTF-8
        return token[1:].rstrip(b'"').decode("utf-8", "replace")
    return key if isinstance(key, str) else ""


def _secret_key(token: bytes) -> bool:
    """Whether a key's token (quotes included) names a credential."""
    if _MAYBE.search(token) is None:
        return False
    if (known := _KNOWN.get(token)) is not None:
        return known
    try:
        key = json.loads(token)
    except ValueError:  # cut short, a bad escape, no UTF-8
        key = token[1:].rstrip(b'"').decode("utf-8", "replace")
    known = isinstance(key, str) and secret_name(key)
    if len(token) <= 64:
        if len(_KNOWN) >= 256:
            _KNOWN.clear()
        _KNOWN[token] = known
    return known


# Keys' answers, a body repeating a key (one per object of a list) decoding it once.
_KNOWN: dict[bytes, bool] = {}


def body(raw: bytes) -> tuple[bytes, list[str]]:
    """``raw`` with every secret value replaced, and what was replaced (see the module's
    docstring; past the first LISTED values, an empty string each: listed counts them);
    ``raw`` itself and [] when it holds none."""
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
    pos = 0
    while (token := _token(raw, pos)) is not None:
        c, start, end = token
        pos = end
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
                key = raw[start:end]
                top[1], top[2] = key, False
                top[3] = c == 0x22 and _secret_key(key)
                continue
            if top[3]:
                # The value of a credential's key, whatever it is.
                pos = _value_end(raw, c, start, end)
                out += raw[last:start] + _MARK_JSON
                last = pos
                paths.append(_path(stack) if len(paths) < LISTED else "")
                top[3] = False  # its value is had: a second value is no credential's
                continue
        if c == 0x7B or c == 0x5B:  # { [
            if len(stack) >= MAX_DEPTH:
                return _flat(raw)
            top = [True, b"", True, False] if c == 0x7B else [False, 0, False, False]
            stack.append(top)
    if not paths:
        return raw, []
    return bytes(out + raw[last:]), paths


def _flat(raw: bytes) -> tuple[bytes, list[str]]:
    """A body nested past MAX_DEPTH, read flat: every string followed by ``:`` is a
    key, and the value after it of a credential's key is replaced; the paths are the
    keys alone. Only strings are visited, each once."""
    out = bytearray()
    paths: list[str] = []
    last = 0
    pos = 0
    while (quote := raw.find(b'"', pos)) >= 0:
        pos = key_end = _string_end(raw, quote)
        colon = _token(raw, pos)
        if colon is None or colon[0] != 0x3A or not _secret_key(raw[quote:key_end]):
            continue
        value = _token(raw, colon[2])
        if value is None or value[0] in b",:}]":
            continue
        c, start, end = value
        pos = _value_end(raw, c, start, end)
        out += raw[last:start] + _MARK_JSON
        last = pos
        paths.append(_key(raw[quote:key_end]) if len(paths) < LISTED else "")
    if not paths:
        return raw, []
    return bytes(out + raw[last:]), paths


def _path(stack: list[list[Any]]) -> str:
    """The path of the value of the innermost key, as a refusal names it (cut once
    past LISTED_CHARS: a record keeps no more)."""
    path = ""
    for is_object, at, _, _ in stack:
        if is_object:
            key = _key(at) if at[:1] == b'"' else ""
            path = f"{path}.{key}" if path else key
        else:
            path = f"{path}[{at}]"
        if len(path) > LISTED_CHARS:
            break
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
