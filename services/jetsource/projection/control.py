"""Which versions of each read model exist and which one queries read.

One NATS KV entry per model (bucket ``JETSOURCE_READMODELS``)::

    {"active": 1, "versions": {"1": "live", "2": "building"}}

``building``: a rebuild owns it (``jetsource projector rebuild``, or ``reset`` once
the version is truncated); ``live``: the projector service keeps it up to date;
``dropped``: ``jetsource projector drop`` is deleting it; ``resetting``:
``jetsource projector reset`` is truncating it in place. A worker of a dropped or
resetting version stops and writes nothing more (it asks :func:`version_dropped`
before each batch), the projector service stops running it; a dropped version's
entry goes once the consumer and the keys are gone, a reset one turns ``building``
and then ``live`` again.

Beside the versions the entry carries what operators read in ``projector status``:
``progress`` of a version being built (done/total stream sequences, rate, ETA) and
``last_replay``, the last selective replay run of the model (run id, selectors,
events, last replayed stream sequence, when it finished), and ``claims``: which run
of rebuild, reset or drop holds each version, with its heartbeat. All optional.

Updates are compare-and-set on the entry's revision, so the cutover (changing
``active``) is one atomic write: a reader sees the old version or the new one, each
complete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from jetsource.core.aio import wait_for
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.eventstore import jsapi

BUILDING, LIVE, DROPPED, RESETTING = "building", "live", "dropped", "resetting"
# States in which a worker of the version must not write.
FENCED = frozenset({DROPPED, RESETTING})


class ControlError(Exception):
    pass


@dataclass
class ModelControl:
    active: int
    versions: dict[int, str] = field(default_factory=dict)
    revision: int = 0
    # Build progress per version (while building or resetting).
    progress: dict[int, dict[str, Any]] = field(default_factory=dict)
    # The last selective replay run of this model.
    last_replay: dict[str, Any] | None = None
    # Stream sequences an operator discarded from this model's dead letters: every
    # version of the model steps over them by rule (a rebuild never stalls on one).
    discarded: list[int] = field(default_factory=list)
    # Who runs an admin command on each version now (rebuild, reset, drop): owner,
    # command, host, pid and a heartbeat the holder renews (admin.Lease). A second
    # command finds it fresh and is refused (or waits); a stale one is taken over.
    claims: dict[int, dict[str, Any]] = field(default_factory=dict)

    def live(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s == LIVE)

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "active": self.active,
            "versions": {str(v): s for v, s in self.versions.items()},
        }
        if self.progress:
            body["progress"] = {str(v): p for v, p in self.progress.items()}
        if self.last_replay is not None:
            body["last_replay"] = self.last_replay
        if self.discarded:
            body["discarded"] = sorted(set(self.discarded))
        if self.claims:
            body["claims"] = {str(v): c for v, c in self.claims.items()}
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, data: bytes, revision: int) -> ModelControl:
        body: dict[str, Any] = json.loads(data)
        return cls(
            int(body["active"]),
            {int(v): s for v, s in body["versions"].items()},
            revision,
            {int(v): p for v, p in (body.get("progress") or {}).items()},
            body.get("last_replay"),
            [int(x) for x in body.get("discarded") or []],
            {int(v): c for v, c in (body.get("claims") or {}).items()},
        )


class Control:
    def __init__(self, nc: NATS, bucket: str, replicas: int = 1) -> None:
        self._js = nc.jetstream()
        self._bucket = bucket
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:

            async def find_or_create() -> KeyValue:
                try:
                    return await self._js.key_value(self._bucket)
                except BucketNotFoundError:
                    return await self._js.create_key_value(
                        bucket=self._bucket, history=10, replicas=self._replicas
                    )

            # Both unanswered while a cluster has no meta leader: waited for, bounded.
            self._kv = await jsapi.create_waiting(
                find_or_create, f"KV_{self._bucket}", self._replicas, "bucket"
            )
        return self._kv

    async def get(self, model: str) -> ModelControl | None:
        """The model's entry, or None; a read creates no bucket (`projector status` on
        a NATS without the control bucket made it, a write it was not asked for)."""
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                return None
        kv = self._kv
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


class DropFence:
    """What a worker of one model version asks before each write: has ``drop`` or
    ``reset`` marked its version (state ``dropped`` or ``resetting``)? The control
    entry is read at most every ``every_s`` (and the bucket is never created from
    here); the answer is kept that long. When NATS does not answer the answer is
    "not fenced" (the worker cannot pull then either, and ``drop`` waits for it).
    Not sticky: a version reset (or dropped and built again) is written again once
    its state is ``building`` or ``live``."""

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
        # The entry, read, no longer lists the version: a drop of it has ended.
        self.gone = False

    async def dropped(self) -> bool:
        now = time.monotonic()
        if now - self._checked < self.every_s:
            return self._dropped
        self._checked = now
        try:
            if self._kv is None:
                self._kv = await self._js.key_value(self.bucket)
            entry = await self._kv.get(self.model)
        except Exception:  # no bucket, no entry, NATS away: not fenced
            self._dropped = self.gone = False
            return False
        if entry.value is None:
            self._dropped = self.gone = False
            return False
        versions = ModelControl.decode(entry.value, 0).versions
        self._dropped = versions.get(self.version) in FENCED
        self.gone = self.version not in versions
        return self._dropped


_FENCES: dict[tuple[int, str, str, int], DropFence] = {}


async def version_dropped(
    nc: NATS, bucket: str, model: str, version: int, gone_too: bool = False
) -> bool:
    """True while ``jetsource projector drop`` or ``reset`` has marked ``model``
    ``version`` (dropped, resetting): its worker must stop before writing anything
    more. Cheap enough to ask before every batch (one KV read per quarter second per
    version and connection). ``gone_too``: also True once the entry no longer lists
    the version (a drop of it has ended), for a caller that saw it listed (a build's
    archive phase); a worker of a version never listed (v1 of a model with no entry
    yet) must not be fenced by that. The same cache either way."""
    key = (id(nc), bucket, model, version)
    fence = _FENCES.get(key)
    if fence is None or fence.nc is not nc:
        fence = _FENCES[key] = DropFence(nc, bucket, model, version)
    dropped = await fence.dropped()
    return dropped or (gone_too and fence.gone)


log = logging.getLogger("jetsource.projection.control")


class ControlUnavailableError(EventStoreUnavailableError):
    """The control bucket did not answer and no recent enough active version is known."""


class ActiveVersionCache:
    """The active version of each model as readers (the query service) need it.

    Looked up in the control bucket at most every ``refresh_s``, in the background: a
    reader gets the version known meanwhile and never waits for NATS while that
    version was confirmed within ``max_stale_s``. So reads keep coming from the read
    model while NATS is briefly away, and a cutover is seen within about ``refresh_s``.
    With nothing known, or only an older version, the reader waits for the lookup
    (at most ``lookup_timeout_s``) and gets ``ControlUnavailableError`` if it fails."""

    def __init__(
        self,
        control: Control,
        refresh_s: float = 1.0,
        max_stale_s: float = 30.0,
        lookup_timeout_s: float = 2.0,
    ) -> None:
        self.control = control
        self.refresh_s = refresh_s
        self.max_stale_s = max_stale_s
        self.lookup_timeout_s = lookup_timeout_s
        # model -> (active version, monotonic time it was last confirmed)
        self.known: dict[str, tuple[int, float]] = {}
        self._started: dict[str, float] = {}
        self._lookups: dict[str, asyncio.Future[int]] = {}

    async def _lookup(self, model: str) -> int:
        control = await wait_for(self.control.get(model), self.lookup_timeout_s)
        version = control.active if control else 1
        self.known[model] = (version, time.monotonic())
        return version

    def _done(self, model: str, lookup: asyncio.Future[int]) -> None:
        if lookup.cancelled() or lookup.exception() is None:
            return
        known = self.known.get(model)
        if known is not None:
            log.warning(
                "active version of %s not confirmed (%r): serving v%d, confirmed %.0f s ago",
                model,
                lookup.exception(),
                known[0],
                time.monotonic() - known[1],
            )

    async def active(self, model: str) -> int:
        now = time.monotonic()
        known = self.known.get(model)
        lookup = self._lookups.get(model)
        due = now - self._started.get(model, -float("inf")) >= self.refresh_s
        if (lookup is None or lookup.done()) and (known is None or due):
            self._started[model] = now
            lookup = self._lookups[model] = asyncio.ensure_future(self._lookup(model))
            lookup.add_done_callback(lambda f: self._done(model, f))
        if known is not None and now - known[1] <= self.max_stale_s:
            return known[0]
        assert lookup is not None
        try:
            return await asyncio.shield(lookup)
        except Exception as exc:
            age = (
                ""
                if known is None
                else f"; the last one known was confirmed {now - known[1]:.0f} s ago"
            )
            raise ControlUnavailableError(
                f"the active version of read model {model!r} cannot be looked up in NATS "
                f"KV ({exc!r}){age}, longer than control_max_stale_s={self.max_stale_s:g}"
            ) from exc


_ACTIVE: dict[int, ActiveVersionCache] = {}


async def active_version(
    control: Control, model: str, refresh_s: float = 1.0, max_stale_s: float = 30.0
) -> int:
    """The active version of ``model`` for a reader, through one
    :class:`ActiveVersionCache` per ``Control`` (bounded staleness while NATS is away)."""
    cache = _ACTIVE.get(id(control))
    if cache is None or cache.control is not control:
        cache = _ACTIVE[id(control)] = ActiveVersionCache(control, refresh_s, max_stale_s)
    cache.refresh_s, cache.max_stale_s = refresh_s, max_stale_s
    return await cache.active(model)


async def discarded_sequences(nc: NATS, bucket: str, model: str) -> set[int]:
    """The stream sequences discarded from ``model``'s dead letters (any version), as
    its control entry lists them; empty when there is none or NATS does not answer
    (then a refused event is dead-lettered again, as before)."""
    try:
        kv = await nc.jetstream().key_value(bucket)
        entry = await kv.get(model)
    except Exception:
        return set()
    if entry is None or entry.value is None:
        return set()
    return set(ModelControl.decode(entry.value, entry.revision or 0).discarded)
