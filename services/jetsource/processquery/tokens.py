"""Opaque, tamper-evident page tokens: base64url(version | cursor | tag), the tag an
HMAC-SHA256 over the method, the request it belongs to (its filters) and the cursor.
The key comes from the deployment's names, so every replica accepts every replica's
tokens; a token changed, made up, cut short or taken from another request is
INVALID_ARGUMENT naming ``page_token``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

import grpc

from jetsource.core.grpcserver import RpcError

VERSION = 1
_TAG = 16
_FAULT = "not a page token this method returned for this request (start without one)"
_CURSOR = struct.Struct(">Q")


def invalid(field: str, message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field=field)


class PageTokens:
    def __init__(self, seed: str) -> None:
        self._key = hashlib.sha256(
            f"jetsource process page tokens v{VERSION}|{seed}".encode()
        ).digest()

    def _tag(self, method: str, bound: str, body: bytes) -> bytes:
        text = f"{method}\0{bound}\0".encode()
        return hmac.new(self._key, text + body, hashlib.sha256).digest()[:_TAG]

    def make_raw(self, method: str, bound: str, cursor: bytes) -> str:
        body = bytes([VERSION]) + cursor
        return base64.urlsafe_b64encode(body + self._tag(method, bound, body)).decode().rstrip("=")

    def read_raw(self, method: str, bound: str, token: str) -> bytes:
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
        except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
            raise invalid("page_token", _FAULT) from exc
        if len(raw) < 1 + _TAG or raw[0] != VERSION:
            raise invalid("page_token", _FAULT)
        body, tag = raw[:-_TAG], raw[-_TAG:]
        if not hmac.compare_digest(tag, self._tag(method, bound, body)):
            raise invalid("page_token", _FAULT)
        return body[1:]

    def make(self, method: str, bound: str, cursor: int) -> str:
        return self.make_raw(method, bound, _CURSOR.pack(cursor))

    def read(self, method: str, bound: str, token: str) -> int:
        body = self.read_raw(method, bound, token)
        if len(body) != _CURSOR.size:
            raise invalid("page_token", _FAULT)
        return int(_CURSOR.unpack(body)[0])
