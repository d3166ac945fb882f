"""Which versions of each read model exist and which one queries read.

One NATS KV entry per model (bucket ``JETSOURCE_READMODELS``)::

    {"active": 1, "versions": {"1": "live", "2": "building"}}

``building``: a rebuild owns it (``jetsource projector rebuild``); ``live``: the
projector service keeps it up to date; ``dropped``: ``jetsource projector drop`` is
deleting it: a worker of that version stops and writes nothing more (it asks
:func:`version_dropped` before each batch), the projector service stops running it,
and the entry goes once the consumer and the keys are gone.

Updates are compare-and-set on the entry's revision, so the cutover (changing
``active``) is one atomic write: a reader sees the old version or the new one, each
complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

BUILDING, LIVE, DROPPED = "building", "live", "dropped"


class ControlError(Exception):
    pass


@dataclass
class ModelControl:
    active: int
    versions: dict[int, str] = field(default_factory=dict)
    revision: int = 0

    def live(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s == LIVE)

    def encode(self) -> bytes:
        return json.dumps(
            {"active": self.active, "versions": {str(v): s for v, s in self.versions.items()}}
        ).encode()

    @classmethod
    def decode(cls, data: bytes, revision: int) -> ModelControl:
        body: dict[str, Any] = json.loads(data)
        return cls(int(body["active"]), {int(v): s for v, s in body["versions"].items()}, revision)


class Control:
    def __init__(self, nc: NATS, bucket: str, replicas: int = 1) -> None:
        self._js = nc.jetstream()
        self._bucket = bucket
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                self._kv = await self._js.create_key_value(
                    bucket=self._bucket, history=10, replicas=self._replicas
                )
        return self._kv

    async def get(self, model: str) -> ModelControl | None:
        kv = await self.kv()
        try:
            entry = await kv.get(model)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return ModelControl.decode(entry.value, entry.revision or 0)

    async def ensure(self, model: str, version: int) -> ModelControl:
        """The model's control entry; created with ``version`` active and live."""
        current = await self.get(model)
        if current is not None:
            return current
        fresh = ModelControl(version, {version: LIVE})
        kv = await self.kv()
        try:
            fresh.revision = await kv.create(model, fresh.encode())
        except KeyWrongLastSequenceError:
            again = await self.get(model)
            assert again is not None
            return again
        return fresh

    async def save(self, model: str, control: ModelControl) -> ModelControl:
        """Compare-and-set: fails with ControlError if somebody changed it meanwhile."""
        kv = await self.kv()
        try:
            control.revision = await kv.update(model, control.encode(), last=control.revision)
        except KeyWrongLastSequenceError as exc:
            raise ControlError(
                f"read-model control for {model!r} changed meanwhile; try again"
            ) from exc
        return control

    async def models(self) -> dict[str, ModelControl]:
        kv = await self.kv()
        out = {}
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        for key in keys:
            control = await self.get(key)
            if control is not None:
                out[key] = control
        return out


class DropFence:
    """What a worker of one model version asks before each write: has ``drop``
    marked its version? The control entry is read at most every ``every_s`` (and
    the bucket is never created from here); when NATS does not answer the answer is
    "not dropped" (the worker cannot pull then either, and ``drop`` waits for it)."""

    def __init__(
        self, nc: NATS, bucket: str, model: str, version: int, every_s: float = 0.25
    ) -> None:
        self.nc = nc
        self._js = nc.jetstream()
        self.bucket = bucket
        self.model = model
        self.version = version
        self.every_s = every_s
        self._kv: KeyValue | None = None
        self._checked = -float("inf")
        self._dropped = False

    async def dropped(self) -> bool:
        if self._dropped:
            return True
        now = time.monotonic()
        if now - self._checked < self.every_s:
            return False
        self._checked = now
        try:
            if self._kv is None:
                self._kv = await self._js.key_value(self.bucket)
            entry = await self._kv.get(self.model)
        except Exception:  # no bucket, no entry, NATS away: not dropped
            return False
        if entry.value is None:
            return False
        versions = ModelControl.decode(entry.value, 0).versions
        self._dropped = versions.get(self.version) == DROPPED
        return self._dropped


_FENCES: dict[tuple[int, str, str, int], DropFence] = {}


async def version_dropped(nc: NATS, bucket: str, model: str, version: int) -> bool:
    """True once ``jetsource projector drop`` has marked ``model`` ``version``: its
    worker must stop before writing anything more. Cheap enough to ask before every
    batch (one KV read per quarter second per version and connection)."""
    key = (id(nc), bucket, model, version)
    fence = _FENCES.get(key)
    if fence is None or fence.nc is not nc:
        fence = _FENCES[key] = DropFence(nc, bucket, model, version)
    return await fence.dropped()
