"""Partitioned consumption: aggregates split into N partitions by the server, each
consumed in order by one worker that holds its lease; fencing stops a worker that lost it.

How the server partitions (nothing is hashed by hand): each domain's stream gets a
**mirror** ``<STREAM>_P<N>`` whose subject transform maps
``<prefix>.<aggregate>.<type>`` to ``jetsource.part.<STREAM>.p<N>.{{partition(N,1)}}.
<aggregate>.<type>``. A mirror keeps the origin's stream sequences and timestamps, so
a partition worker sees every event exactly as the unpartitioned worker does (same
``stream_seq``, same ``recorded_at``); only the subject is mapped back. The write
stream is not touched: its subjects, its optimistic concurrency (expected last
sequence per aggregate subject), direct gets and atomic batches are as before. Cost:
the mirror stores a second copy of the stream, and an event is visible to a partition
worker once mirrored (well under a millisecond on one server). Per-aggregate order
holds because all of an aggregate's events hash to one partition, consumed in order.

Membership and leases live in a JetStream KV bucket (``KV_<bucket>``: ``max_age``
is the lease TTL, so the server expires what a dead replica stops renewing).
``<group>.m.<member>`` is a member's heartbeat; ``<group>.p.<n>`` the lease of
partition n, taken by compare-and-set (expected last subject sequence). The KV
revision that took a lease is its **fencing token**, strictly increasing.

Fencing is checked by the model's own atomic write: the new owner first writes its
token into the model's store (a Valkey key, a graph node; only ever raised), and every
write of the old owner (the Lua script, the Cypher transaction) first compares its
token with it and writes nothing when they differ (``FencedError``). Snapshots are
written to JetStream, which cannot compare a Valkey key: each save checks the lease
first (check-then-write; a snapshot is a function of (aggregate, version), so a late
save writes the bytes the owner writes).

Balance: each member holds at most ceil(N / members) partitions; it releases the
surplus (after finishing its batch) and takes free ones. A member that dies stops
renewing: its leases expire after the TTL and the others take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, model_validator

from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import Delivery, JsApiError, OutMessage, Replies

log = logging.getLogger("jetsource.projector")

PART_ROOT = "jetsource.part"
_KV_OP = "KV-Operation"


class PartitionOptions(BaseModel):
    """``JETSOURCE_PROJECTOR__PARTITIONS__...``. ``count`` 0 (the default) is one
    worker per model, as before; N > 0 splits every model of the service in N."""

    count: int = Field(default=0, ge=0, le=256)
    lease_bucket: str = Field(default="JETSOURCE_LEASES", pattern=r"^[A-Za-z0-9_-]+$")
    # A replica that stops renewing loses its partitions after this long.
    lease_ttl_s: float = Field(default=5.0, ge=0.5)
    renew_every_s: float = Field(default=1.0, gt=0)
    # This replica's name in the bucket; default: host name and process id.
    member: str = Field(default="", pattern=r"^[A-Za-z0-9_-]*$")
    # Replicas of one group share partitions; default: the service name.
    group: str = Field(default="", pattern=r"^[A-Za-z0-9_-]*$")
    # Models on these stores are not split: each runs as one worker over the whole
    # stream, under one more lease (unit ``count``) with the same fencing. ArcadeDB
    # (the local graph store) detects conflicts by page and refuses concurrent writers
    # of one node type; with Neo4j in production, set it to [] to split graphs too.
    whole_stores: list[str] = Field(default_factory=lambda: ["graph"])

    @model_validator(mode="after")
    def _renew_within_ttl(self) -> PartitionOptions:
        if self.renew_every_s * 2 > self.lease_ttl_s:
            raise ValueError(
                f"partitions.renew_every_s ({self.renew_every_s}) must be at most half of "
                f"partitions.lease_ttl_s ({self.lease_ttl_s})"
            )
        return self


def default_member() -> str:
    host = "".join(c if c.isalnum() or c in "_-" else "-" for c in socket.gethostname())
    return f"{host[:40]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


# -- the server's partitions -----------------------------------------------------------


def mirror_stream(stream: str, count: int) -> str:
    return f"{stream}_P{count}"


def part_root(stream: str, count: int) -> str:
    return f"{PART_ROOT}.{stream}.p{count}"


def mirror_config(
    stream: str, prefix: str, count: int, replicas: int, max_age_ns: int = 0
) -> dict[str, Any]:
    """The partition mirror of a domain's stream: same sequences and timestamps,
    subjects mapped to ``<root>.<partition>.<aggregate>.<type>`` by the server."""
    root = part_root(stream, count)
    return {
        "name": mirror_stream(stream, count),
        "mirror": {
            "name": stream,
            "subject_transforms": [
                {
                    "src": f"{prefix}.*.*",
                    "dest": f"{root}.{{{{partition({count},1)}}}}.{{{{wildcard(1)}}}}."
                    "{{wildcard(2)}}",
                }
            ],
        },
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "compression": "s2",
        "num_replicas": replicas,
        "max_age": max_age_ns,
        "deny_delete": True,
        "allow_direct": True,
    }


async def ensure_mirror(
    replies: Replies, stream: str, prefix: str, count: int, replicas: int, timeout: float
) -> str:
    """Create the partition mirror if missing (a mirror's configuration is fixed)."""
    name = mirror_stream(stream, count)
    try:
        await jsapi.api(replies, f"STREAM.INFO.{name}", {}, timeout)
        return name
    except JsApiError as exc:
        if exc.err_code != jsapi.ERR_STREAM_NOT_FOUND:
            raise
    origin = await jsapi.api(replies, f"STREAM.INFO.{stream}", {}, timeout)
    config = mirror_config(stream, prefix, count, replicas, int(origin["config"].get("max_age", 0)))
    try:  # waiting for a cluster that cannot place it yet (no leader, a peer offline)
        await jsapi.create_waiting(
            lambda: jsapi.api(replies, f"STREAM.CREATE.{name}", config, timeout), name, replicas
        )
    except JsApiError as exc:
        if exc.err_code != jsapi.ERR_STREAM_NAME_IN_USE:
            raise
    return name


async def wait_mirror(
    replies: Replies, stream: str, count: int, timeout: float, deadline_s: float = 600.0
) -> None:
    """Until the partition mirror holds everything the stream held when asked: a build
    that reads the mirror must not take a mirror still catching up for the end."""
    origin = await jsapi.api(replies, f"STREAM.INFO.{stream}", {}, timeout)
    target = int(origin["state"]["last_seq"])
    started = time.monotonic()
    while True:
        info = await jsapi.api(replies, f"STREAM.INFO.{mirror_stream(stream, count)}", {}, timeout)
        if int(info["state"]["last_seq"]) >= target:
            return
        if time.monotonic() - started > deadline_s:
            raise TimeoutError(
                f"the partition mirror of {stream} is not caught up after {deadline_s:.0f} s"
            )
        await asyncio.sleep(0.05)


def partition_of(aggregate_id: str, count: int) -> int:
    """The partition the server's ``{{partition(count,1)}}`` gives an aggregate
    (FNV-1a 32 of the token, modulo count): for tests and tools, never for routing."""
    h = 0x811C9DC5
    for b in aggregate_id.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % count


@dataclass(frozen=True)
class Partition:
    """One partition of one domain's stream, as a worker consumes it."""

    index: int
    count: int
    origin_stream: str
    origin_prefix: str

    @property
    def stream(self) -> str:
        return mirror_stream(self.origin_stream, self.count)

    @property
    def root(self) -> str:
        return f"{part_root(self.origin_stream, self.count)}.{self.index}"

    def durable(self, durable: str) -> str:
        return f"{durable}-p{self.index}of{self.count}"

    def filter_subjects(self, subjects: list[str]) -> list[str]:
        """The model's filter (on the origin's subjects) moved under this partition."""
        cut = len(self.origin_prefix) + 1
        return [f"{self.root}.{s[cut:]}" for s in subjects]

    def origin_subject(self, subject: str) -> str:
        """A subject of this partition as the origin stream has it."""
        return f"{self.origin_prefix}.{subject[len(self.root) + 1 :]}"

    def origin(self, d: Delivery) -> Delivery:
        """The delivery as the origin stream has it (sequence and time are the same)."""
        return Delivery(
            self.origin_subject(d.subject),
            d.data,
            d.headers,
            d.reply,
            d.stream_seq,
            d.delivered,
            d.time_ns,
            d.pending,
        )


# -- fencing -------------------------------------------------------------------------


class PartitionCountMismatch(ValueError):
    """A live member of the group splits the streams another way (another
    ``PARTITIONS__COUNT``, or another number of leased units): its lease ``p.<i>``
    would name another partition, both would write the same aggregates and some would
    have no worker. Refused; the whole group must be stopped to change the count."""


class FencedError(Exception):
    """This worker's lease was taken over: its writes are refused."""


@dataclass
class Fence:
    """What a partition worker's model writes under: its lease's token. Stores that
    compare it in their atomic write register a ``claim`` (raise the stored token to
    this one) run before the worker's first write; ``held`` asks the lease itself."""

    group: str
    partition: int
    token: int
    held: Callable[[], Awaitable[bool]]
    claims: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def claim(self) -> None:
        for claim in self.claims:
            await claim()

    async def check(self) -> None:
        if not await self.held():
            raise FencedError(f"lease of partition {self.partition} ({self.group}) lost")


# -- leases ----------------------------------------------------------------------------


@dataclass
class Lease:
    partition: int
    token: int  # the KV revision that took it: the fencing token
    revision: int  # the latest renewal


class Leases:
    """Membership and partition leases of one group in a KV bucket (its stream is
    ``KV_<bucket>``, so ``nats kv`` shows them)."""

    def __init__(
        self,
        nc: Any,
        options: PartitionOptions,
        group: str,
        member: str,
        replicas: int = 1,
        timeout: float = 5.0,
    ) -> None:
        self.o = options
        self.group = group
        self.member = member
        self.replicas = replicas
        self.timeout = timeout
        self._replies = Replies(nc)
        self._stream = f"KV_{options.lease_bucket}"
        self._pre = f"$KV.{options.lease_bucket}.{group}"
        self.held: dict[int, Lease] = {}
        # What this member announces in its heartbeat (the host sets ``units``: the
        # partitions plus the unit of the models kept whole), and what the others
        # announced at the last ``state()`` (None: a member of an older version).
        self.units = options.count
        self.announced: dict[str, tuple[int, int] | None] = {}

    def split(self) -> tuple[int, int]:
        return (self.o.count, self.units)

    def mismatch(self) -> str:
        """Why this member must not hold leases (empty: it may): a live member
        announced another split at the last ``state()``."""
        for member, split in sorted(self.announced.items()):
            if member != self.member and split is not None and split != self.split():
                return (
                    f"partition count mismatch in group {self.group!r} (lease bucket "
                    f"{self.o.lease_bucket}): member {member!r} runs COUNT={split[0]} "
                    f"({split[1]} leased units), this member {self.member!r} COUNT="
                    f"{self.o.count} ({self.units} units); every replica of a group must "
                    "use the same PARTITIONS__COUNT and models: stop the whole group to "
                    "change it"
                )
        return ""

    async def start(self) -> None:
        await self._replies.start()
        config = {
            "name": self._stream,
            "subjects": [f"$KV.{self.o.lease_bucket}.>"],
            "retention": "limits",
            "storage": "file",
            "discard": "new",
            "max_msgs_per_subject": 1,
            "max_age": int(self.o.lease_ttl_s * 1_000_000_000),
            "allow_direct": True,
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "num_replicas": self.replicas,
            "duplicate_window": int(min(self.o.lease_ttl_s, 120) * 1_000_000_000),
            # The revisions are the fencing tokens, and the stores keep the highest
            # they saw: a bucket deleted and made again must not start at 1 (every
            # new owner's claim would be refused, its partition stalled for good).
            # Microseconds since the epoch: above every revision of an earlier bucket
            # unless it took more than a million writes a second (and below 2^53).
            "first_seq": time.time_ns() // 1000,
        }
        try:  # waiting for a cluster that cannot place it yet (no leader, a peer offline)
            await jsapi.create_waiting(
                lambda: jsapi.api(
                    self._replies, f"STREAM.CREATE.{self._stream}", config, self.timeout
                ),
                self._stream,
                self.replicas,
                "bucket",
            )
        except JsApiError as exc:
            if exc.err_code != jsapi.ERR_STREAM_NAME_IN_USE:
                raise

    async def stop(self) -> None:
        await self._replies.stop()

    async def recreate_if_gone(self) -> bool:
        """The bucket deleted under a running group (``nats kv del --bucket``, a
        ``nats stream rm``): made again (True); False if it is there."""
        try:
            await jsapi.api(self._replies, f"STREAM.INFO.{self._stream}", {}, self.timeout)
            return False
        except JsApiError as exc:
            if exc.err_code != jsapi.ERR_STREAM_NOT_FOUND:
                raise
        await self.start()
        log.error(
            "lease bucket %s was deleted: made again; every lease is taken again",
            self.o.lease_bucket,
        )
        return True

    def _value(self, token: int) -> bytes:
        return json.dumps({"member": self.member, "token": token}).encode()

    async def _put(self, key: str, value: bytes, last: int, delete: bool = False) -> int | None:
        """Compare-and-set on the key's last revision; None if it moved."""
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        if delete:
            headers[_KV_OP] = "DEL"
        try:
            ack = await jsapi.publish(
                self._replies, OutMessage(f"{self._pre}.{key}", value, headers), self.timeout
            )
        except JsApiError as exc:
            if exc.err_code == jsapi.ERR_WRONG_LAST_SEQUENCE:
                return None
            raise
        return ack.seq

    async def state(self) -> tuple[list[str], dict[int, tuple[str, int, int]]]:
        """Live members (sorted) and partition -> (member, token, revision)."""
        members: list[str] = []
        announced: dict[str, tuple[int, int] | None] = {}
        holders: dict[int, tuple[str, int, int]] = {}
        cut = len(self._pre) + 1
        async for raw in jsapi.direct_get_batch(
            self._replies, self._stream, f"{self._pre}.>", 1, self.timeout
        ):
            kind, _, name = raw.subject[cut:].partition(".")
            if raw.headers.get(_KV_OP) in ("DEL", "PURGE"):
                if kind == "p":
                    holders[int(name)] = ("", 0, raw.seq)
                continue
            if kind == "m":
                members.append(name)
                announced[name] = _split_of(raw.data)
            elif kind == "p":
                body = json.loads(raw.data)
                holders[int(name)] = (body["member"], int(body["token"]), raw.seq)
        self.announced = announced
        return sorted(members), holders

    async def heartbeat(self) -> None:
        await jsapi.publish(
            self._replies,
            OutMessage(
                f"{self._pre}.m.{self.member}",
                json.dumps({"count": self.o.count, "units": self.units}).encode(),
                {},
            ),
            self.timeout,
        )

    async def acquire(self, partition: int, last: int) -> Lease | None:
        """Take a free partition (``last``: the revision of its delete marker, or 0)."""
        key = f"p.{partition}"
        # The token is the revision this write gets: write a placeholder first, then
        # the value naming the token, both compare-and-set.
        rev = await self._put(key, self._value(0), last)
        if rev is None:
            return None
        renewed = await self._put(key, self._value(rev), rev)
        if renewed is None:
            return None
        lease = Lease(partition, rev, renewed)
        self.held[partition] = lease
        return lease

    async def renew(self, lease: Lease) -> bool:
        rev = await self._put(f"p.{lease.partition}", self._value(lease.token), lease.revision)
        if rev is None:
            self.held.pop(lease.partition, None)
            return False
        lease.revision = rev
        return True

    async def release(self, lease: Lease) -> None:
        self.held.pop(lease.partition, None)
        with contextlib.suppress(Exception):
            await self._put(f"p.{lease.partition}", b"", lease.revision, delete=True)

    async def forget_member(self) -> None:
        with contextlib.suppress(Exception):
            await jsapi.publish(
                self._replies,
                OutMessage(f"{self._pre}.m.{self.member}", b"", {_KV_OP: "DEL"}),
                self.timeout,
            )

    async def still_held(self, lease: Lease) -> bool:
        raw = await jsapi.last_for_subject(
            self._replies, self._stream, f"{self._pre}.p.{lease.partition}", self.timeout
        )
        if raw is None or raw.headers.get(_KV_OP):
            return False
        body = json.loads(raw.data)
        return bool(body.get("member") == self.member and body.get("token") == lease.token)


def _split_of(data: bytes) -> tuple[int, int] | None:
    try:
        body = json.loads(data or b"{}")
        return (int(body["count"]), int(body["units"]))
    except (ValueError, KeyError, TypeError):
        return None  # an older member's heartbeat ("{}"): nothing to compare


def plan(
    count: int, members: list[str], me: str, holders: dict[int, tuple[str, int, int]]
) -> tuple[list[int], list[int]]:
    """(partitions to release, free partitions to try) for ``me``: at most
    ceil(count / members) each; free ones tried in an order that differs per member
    (fewer collisions), surplus released highest first."""
    live = sorted(set(members) | {me})
    share = math.ceil(count / len(live))
    mine = sorted(p for p, (m, _, _) in holders.items() if m == me)
    release = mine[share:] if len(mine) > share else []
    free = [p for p in range(count) if not holders.get(p, ("", 0, 0))[0]]
    rank = live.index(me)
    free.sort(key=lambda p: (p - rank * count // len(live)) % count)
    room = max(0, share - len(mine))
    return list(reversed(release)), free[:room]


@dataclass
class Membership:
    """One replica's view: keeps its heartbeat and leases, and says which partitions
    to start and stop; the host runs the workers. A round never waits for workers to
    stop (a worker finishing its batch must not delay the renewal of other leases):
    a lost partition's workers stop in the background (fenced already), and a surplus
    one is released only once its workers have stopped."""

    leases: Leases
    count: int
    on_lost: Callable[[int], Awaitable[None]]
    on_gained: Callable[[Lease], Awaitable[None]]
    on_release: Callable[[int], Awaitable[None]]
    last_tick: float = 0.0  # when a round last went through (monotonic; 0: never)
    _releasing: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    _stopping: set[asyncio.Task[None]] = field(default_factory=set)
    conflict: str = ""  # a live member splits the streams another way (health says so)

    def __post_init__(self) -> None:
        self.leases.units = self.count

    async def join(self) -> None:
        """Before the first heartbeat: refuse to join a group whose live members
        split the streams another way (PartitionCountMismatch names both)."""
        await self.leases.state()
        if why := self.leases.mismatch():
            raise PartitionCountMismatch(why)

    def _background(self, work: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await work
            except Exception as exc:
                log.warning("partition handover step failed: %r", exc)

        task = asyncio.create_task(run())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        return task

    @property
    def releasing(self) -> set[int]:
        """Partitions being handed over: their workers must not be started again."""
        return set(self._releasing)

    async def _release(self, lease: Lease) -> None:
        await self.on_release(lease.partition)  # workers finish their batch first
        await self.leases.release(lease)
        log.info("partition %d: released for balance", lease.partition)

    async def tick(self) -> None:
        """One round: heartbeat, renew, read the bucket, release surplus, take free."""
        try:
            await self.leases.heartbeat()
        except Exception:
            if not await self.leases.recreate_if_gone():
                raise
            await self.leases.heartbeat()
        for lease in list(self.leases.held.values()):
            if not await self.leases.renew(lease):
                log.warning("partition %d: lease lost", lease.partition)
                self._background(self.on_lost(lease.partition))
        for p, task in list(self._releasing.items()):
            if task.done():
                del self._releasing[p]
        members, holders = await self.leases.state()
        why = self.leases.mismatch()
        if why != self.conflict:
            (log.error if why else log.info)(why or "partition counts of the group agree again")
        self.conflict = why
        if why:  # two members started at once with different counts: neither holds any
            for lease in list(self.leases.held.values()):
                if lease.partition not in self._releasing:
                    self._releasing[lease.partition] = self._background(self._release(lease))
            self.last_tick = time.monotonic()
            return
        release, take = plan(self.count, members, self.leases.member, holders)
        for p in release:
            surplus = self.leases.held.get(p)
            if surplus is not None and p not in self._releasing:
                self._releasing[p] = self._background(self._release(surplus))
        for p in take:
            taken = await self.leases.acquire(p, holders.get(p, ("", 0, 0))[2])
            if taken is not None:
                log.info("partition %d: lease taken (token %d)", p, taken.token)
                await self.on_gained(taken)
        # Only a round that went through: one failing for a lease TTL has lost every
        # lease and its membership (/healthz said 200 through it, even with no worker).
        self.last_tick = time.monotonic()

    async def leave(self) -> None:
        if self._stopping:
            await asyncio.wait(list(self._stopping), timeout=10)
        for lease in list(self.leases.held.values()):
            await self.leases.release(lease)
        await self.leases.forget_member()


def fence_for(leases: Leases, lease: Lease) -> Fence:
    async def held() -> bool:
        return await leases.still_held(lease)

    return Fence(leases.group, lease.partition, lease.token, held)


class FencedSnapshots:
    """The snapshot store as a partition worker's model sees it: a save first checks
    that the lease is still this worker's (check-then-write: JetStream cannot compare
    a token kept elsewhere; a late save writes what the owner writes anyway)."""

    def __init__(self, snapshots: Any, fence: Fence) -> None:
        self._snapshots = snapshots
        self._fence = fence

    async def save(self, snapshot: Any) -> bool:
        await self._fence.check()
        return bool(await self._snapshots.save(snapshot))

    async def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._snapshots, name)
