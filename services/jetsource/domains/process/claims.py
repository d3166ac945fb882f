"""Idempotency that lasts forever: a claim per (process, event id) and per (process,
idempotency key) in a JetStream key-value bucket, made with ``create`` (it succeeds
for exactly one writer).

A claim is written *before* the append (``pending``, naming the event id that will be
appended) and completed *after* it (``done``, with the positions). A crash between
the two leaves a pending claim; whoever meets it later answers at once from the
event's other claim (its id's, or the request's key's) when that one is completed,
else (after its lease, or at once when this observer knows its own append failed)
takes it over (the other one along when its owner is gone too), looks the event id
up in the process's history and either returns what is stored or appends it then,
and completes both: nothing lost, nothing doubled, no claim of the event left pending.
The stream's duplicate window (``Nats-Msg-Id`` = ``<event id>@<process id>``, as the
claims are per process) guards the short overlap of an owner and a taker on top of
that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetsource.core.errors import EventStoreUnavailableError
from jetsource.eventstore import jsapi, refusals

DEFAULT_BUCKET = "PROCESS_IDEMPOTENCY"


def claim_key(kind: str, process_id: str, value: str) -> str:
    """``e`` (event id) or ``k`` (idempotency key), the process, a digest of the value
    (any text becomes a valid key of bounded length)."""
    return f"{kind}.{process_id}.{hashlib.sha256(value.encode()).hexdigest()[:40]}"


# An event id JSON writes as it is (printable ASCII but for the quote and the backslash):
# every id the observer accepts or assigns.
_PLAIN_ID = re.compile(r"[ !#-\[\]-~]*")


@dataclass(frozen=True)
class ClaimValue:
    event_id: str
    since_ns: int  # when the claim (or its latest takeover) was made
    global_seq: int = 0  # 0 while pending
    process_seq: int = 0
    recorded_ns: int = 0

    @property
    def done(self) -> bool:
        return self.global_seq > 0

    def encode(self) -> bytes:
        """``{"id":...,"t":...,"g":...,"p":...,"r":...}``, compact, as ``json.dumps``
        writes it (two are written per event with an id)."""
        if _PLAIN_ID.fullmatch(self.event_id):  # nothing to escape: the same bytes
            return (
                f'{{"id":"{self.event_id}","t":{self.since_ns:d},"g":{self.global_seq:d},'
                f'"p":{self.process_seq:d},"r":{self.recorded_ns:d}}}'
            ).encode()
        return json.dumps(
            {
                "id": self.event_id,
                "t": self.since_ns,
                "g": self.global_seq,
                "p": self.process_seq,
                "r": self.recorded_ns,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ClaimValue:
        d = json.loads(raw)
        return cls(d["id"], int(d["t"]), int(d["g"]), int(d["p"]), int(d["r"]))


class Claims(Protocol):
    async def create(self, key: str, value: ClaimValue) -> int | None:
        """The new claim's revision, or None when the key is claimed already."""

    async def get(self, key: str) -> tuple[ClaimValue, int] | None: ...

    async def update(self, key: str, value: ClaimValue, revision: int) -> int | None:
        """Compare-and-set; None when the claim moved on since ``revision``."""

    async def put(self, key: str, value: ClaimValue) -> None: ...

    async def delete(self, key: str, revision: int) -> None: ...

    async def create_many(self, pairs: list[tuple[str, ClaimValue]]) -> list[int | None]:
        """``create`` of each pair (one round trip where the adapter can)."""

    async def put_many(self, pairs: list[tuple[str, ClaimValue]]) -> None: ...


_UNAVAILABLE = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    jsapi.NoRespondersError,
)


_CREATE = {"Nats-Expected-Last-Subject-Sequence": "0"}

T = TypeVar("T")


async def _each(
    write: Callable[[str, ClaimValue], Awaitable[T]], pairs: list[tuple[str, ClaimValue]]
) -> list[T]:
    """``write`` of every pair at once (pipelined on the connection). A failure is
    raised once every write has its answer or timed out, not while others are still
    being sent; the caller then holds every claim of the request abandoned (written
    or not), as after a batch whose commit went unanswered."""
    got = await asyncio.gather(*(write(k, v) for k, v in pairs), return_exceptions=True)
    out: list[T] = []
    for r in got:
        if isinstance(r, BaseException):
            raise r
        out.append(r)
    return out


@contextlib.asynccontextmanager
async def _unavailable(what: str, bucket: str) -> AsyncIterator[None]:
    """A claims call's failures as the observer answers them (UNAVAILABLE): the bucket
    not answering, gone (its stream deleted: named, as is what to do), or refusing to
    store (full, sealed: named by :mod:`jetsource.eventstore.refusals`); before, a
    refusal reached the client as INTERNAL and a deleted bucket as an inbox's name."""
    missing = (
        f"the process ledger's claims bucket {bucket} is gone; restarting the observer "
        "creates it again, empty"
    )
    try:
        with refusals.writes_to(f"KV_{bucket}", missing):
            yield
    except _UNAVAILABLE as exc:
        raise EventStoreUnavailableError(
            f"the claims bucket {bucket} did not answer ({what}): {exc!r}"
        ) from exc


class KvClaims:
    """The claims in a JetStream key-value bucket (file storage, one revision kept)."""

    def __init__(self, nc: NATS, bucket: str = DEFAULT_BUCKET, replicas: int = 1) -> None:
        self._js = nc.jetstream()
        self._bucket = bucket
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._replies = jsapi.Replies(nc)
        self._atomic = False

    async def kv(self) -> KeyValue:
        if self._kv is None:

            async def find_or_create() -> KeyValue:
                try:
                    return await self._js.key_value(self._bucket)
                except BucketNotFoundError:
                    return await self._js.create_key_value(
                        bucket=self._bucket,
                        history=1,
                        replicas=self._replicas,
                        storage=StorageType.FILE,
                        description="process ledger: claims of event ids and idempotency keys",
                    )

            # Both unanswered while a cluster has no meta leader: waited for, bounded.
            kv = await jsapi.create_waiting(
                find_or_create, f"KV_{self._bucket}", self._replicas, "bucket"
            )
            await self._replies.start()
            # Many claims in one atomic batch: one round trip and one commit.
            stream = f"KV_{self._bucket}"
            info = await jsapi.api(self._replies, f"STREAM.INFO.{stream}", {}, 5.0)
            config = info["config"]
            if not config.get("allow_atomic"):
                config["allow_atomic"] = True
                await jsapi.api(self._replies, f"STREAM.UPDATE.{stream}", config, 5.0)
            self._atomic = True
            self._kv = kv
        return self._kv

    # At most this many claims are written as single publishes, all sent before any
    # answer is awaited, rather than as one atomic batch. On a file-storage stream the
    # server stages each atomic batch in a file store of its own (created on disk,
    # flushed at commit, deleted): 2-3 ms on a quiet disk, over 10 ms under load, where
    # a single publish is ~0.1 ms. With ``sync_interval: always`` (``jetsource infra
    # up``, production) each single publish syncs, though: creating and completing N
    # claims measured (R1, p50) 3.4 ms singly against 5.1 ms batched at N=8, even at
    # 16 (6.0 / 6.1) and 2x slower singly at 32 (13 / 6.3); without it singles won up
    # to 64 (3.4 / 9.0). 8 keeps a margin under the break-even and covers the few
    # events a request of the SDK or the sessions emitter carries (an id each).
    SINGLE_WRITES_UP_TO = 8

    def _message(self, key: str, value: ClaimValue, create: bool) -> jsapi.OutMessage:
        headers = _CREATE if create else {}
        return jsapi.OutMessage(f"$KV.{self._bucket}.{key}", value.encode(), headers)

    def _singly(self, pairs: list[tuple[str, ClaimValue]]) -> bool:
        """Write ``pairs`` one by one: a few, each of another event. An event's claims
        (its id's and its idempotency key's) are created together, in one batch, when
        they can be: a crash between two single creates leaves one claimed and the
        other absent. The recorder resolves that state (its retry keeps the claim it
        makes of the absent one and completes it with the event), but the batch's
        one-by-one fallback below is the only way left into it."""
        return len(pairs) <= self.SINGLE_WRITES_UP_TO and len(
            {v.event_id for _, v in pairs}
        ) == len(pairs)

    async def create_many(self, pairs: list[tuple[str, ClaimValue]]) -> list[int | None]:
        """The creates of a few claims (each of another event) as single publishes;
        else one atomic batch, and if any key is claimed already (the batch is refused
        whole), each is created on its own to say which. Stopped part-way (a crash, a
        create that never reached the server), that leaves an event's id claimed and
        its key not, or the reverse; the recorder's retry claims the missing one for
        the event (``Recorder._claim``)."""
        if len(pairs) > jsapi.BATCH_LIMIT:
            out: list[int | None] = []
            for i in range(0, len(pairs), jsapi.BATCH_LIMIT):
                out += await self.create_many(pairs[i : i + jsapi.BATCH_LIMIT])
            return out
        if not pairs:
            return []
        async with _unavailable("create", self._bucket):
            await self.kv()
            if len(pairs) == 1:  # (a Record call's claim: through the shared inbox)
                return [await self._create_one(*pairs[0])]
            if self._singly(pairs):
                return await _each(self._create_one, pairs)
            try:
                ack = await jsapi.publish_atomic_batch(
                    self._replies,
                    [self._message(k, v, True) for k, v in pairs],
                    uuid.uuid4().hex,
                    5.0,
                )
            except jsapi.JsApiError as exc:
                if exc.err_code != jsapi.ERR_WRONG_LAST_SEQUENCE:
                    raise
            else:
                first = ack.seq - len(pairs) + 1
                return list(range(first, ack.seq + 1))
        return list(await asyncio.gather(*(self.create(k, v) for k, v in pairs)))

    async def put_many(self, pairs: list[tuple[str, ClaimValue]]) -> None:
        """Completions: a few as single puts, else atomic batches. Put one by one, a
        crash between them leaves an event's claims completed or pending, each of
        which a later request resolves; so no one-claim-per-event rule here."""
        if not pairs:
            return
        async with _unavailable("put", self._bucket):
            await self.kv()
            if len(pairs) == 1:
                await self._put_one(*pairs[0])
                return
            if len(pairs) <= self.SINGLE_WRITES_UP_TO:
                await _each(self._put_one, pairs)
                return
            for i in range(0, len(pairs), jsapi.BATCH_LIMIT):
                chunk = pairs[i : i + jsapi.BATCH_LIMIT]
                await jsapi.publish_atomic_batch(
                    self._replies,
                    [self._message(k, v, False) for k, v in chunk],
                    uuid.uuid4().hex,
                    5.0,
                )

    async def _create_one(self, key: str, value: ClaimValue) -> int | None:
        """``create`` as the batch's message says it (no earlier message on the key),
        through the shared inbox; a refusal is asked again of ``create``, which also
        claims a key whose claim was deleted (released: a tombstone is its last
        message), as the batch's fallback did, and says None only when it is held."""
        try:
            return await self._publish(key, value, _CREATE)
        except jsapi.JsApiError as exc:
            if exc.err_code != jsapi.ERR_WRONG_LAST_SEQUENCE:
                raise
        return await self.create(key, value)

    async def _put_one(self, key: str, value: ClaimValue) -> int:
        return await self._publish(key, value, None)

    async def _publish(self, key: str, value: ClaimValue, headers: dict[str, str] | None) -> int:
        msg = await self._replies.request(f"$KV.{self._bucket}.{key}", value.encode(), headers, 5.0)
        return jsapi.parse_puback(msg).seq

    async def create(self, key: str, value: ClaimValue) -> int | None:
        async with _unavailable("create", self._bucket):
            kv = await self.kv()
            try:
                return await kv.create(key, value.encode(), validate_keys=False)
            except KeyWrongLastSequenceError:
                return None

    async def get(self, key: str) -> tuple[ClaimValue, int] | None:
        async with _unavailable("get", self._bucket):
            kv = await self.kv()
            try:
                entry = await kv.get(key, validate_keys=False)
            except KeyNotFoundError:
                return None
        if entry.value is None:
            return None
        return ClaimValue.decode(entry.value), entry.revision or 0

    async def update(self, key: str, value: ClaimValue, revision: int) -> int | None:
        async with _unavailable("update", self._bucket):
            kv = await self.kv()
            try:
                return await kv.update(key, value.encode(), last=revision, validate_keys=False)
            except KeyWrongLastSequenceError:
                return None

    async def put(self, key: str, value: ClaimValue) -> None:
        async with _unavailable("put", self._bucket):
            kv = await self.kv()
            await kv.put(key, value.encode(), validate_keys=False)

    async def delete(self, key: str, revision: int) -> None:
        async with _unavailable("delete", self._bucket):
            kv = await self.kv()
            with contextlib.suppress(KeyWrongLastSequenceError):  # taken over: theirs now
                await kv.delete(key, last=revision, validate_keys=False)
