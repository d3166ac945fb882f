"""What every Valkey read model shares: the client, transient errors, the
per-aggregate batching helpers, the checkpoint step of an apply script, and a base
class with its namespace, checkpoint, digest and drop.

Every key of a model version lives under ``<prefix>:<model>:v<version>:``, so two
versions run side by side.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Collection, Sequence
from typing import Any, TypeVar

from valkey import exceptions as valkey_errors
from valkey.asyncio import Valkey
from valkey.asyncio.retry import Retry
from valkey.backoff import ExponentialBackoff

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.aio import wait_for
from jetsource.core.codec import UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import AccessDeniedError
from jetsource.core.settings import JetsourceSettings, redact_url
from jetsource.projection.contract import (
    Checkpoint,
    ModelSpec,
    Outcome,
    StoreLost,
    TransientError,
)
from jetsource.projection.marks import Mark
from jetsource.projection.partitions import Fence, FencedError

T = TypeVar("T")
log = logging.getLogger("jetsource.valkey")
_TRANSIENT = (
    valkey_errors.ConnectionError,  # also refused credentials (AUTH, NOAUTH, WRONGPASS)
    valkey_errors.TimeoutError,
    valkey_errors.BusyLoadingError,
    # The server answers, and refuses the write for reasons of its own, none of them
    # the event's: at maxmemory with noeviction (OOM), a replica after a failover
    # (READONLY), an ACL that lost a right (NOPERM). Taken for a refusal of the event
    # they dead-lettered every event of a batch and parked its aggregates, and nothing
    # came back once memory was freed; as store outages they are redelivered until the
    # store writes again.
    valkey_errors.OutOfMemoryError,
    valkey_errors.ReadOnlyError,
    valkey_errors.NoPermissionError,
    valkey_errors.TryAgainError,
    valkey_errors.ClusterDownError,
    OSError,
)
# Refusals valkey-py has no class for (a ResponseError whose text starts with the code):
# a failed persistence write with stop-writes-on-bgsave-error (MISCONF), a script or
# module running too long (BUSY), a replica whose primary is down (MASTERDOWN), too few
# replicas for min-replicas-to-write (NOREPLICAS).
_TRANSIENT_CODES = ("MISCONF", "BUSY", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN")


def connect_valkey(settings: JetsourceSettings) -> Valkey:
    v = settings.valkey
    options: dict[str, Any] = {
        "username": v.username,
        "password": v.password.get_secret_value() if v.password else None,
        "socket_timeout": v.socket_timeout_s,
        "socket_connect_timeout": v.socket_timeout_s,
        # A dropped connection is tried again (3 times, 50 ms doubling) before a
        # command fails: what redis-py did by default and valkey-py does not, so a
        # blip is not an error a query returns.
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        "retry_on_error": [valkey_errors.ConnectionError, valkey_errors.TimeoutError],
    }
    if v.tls.active:
        options["ssl_ca_certs"] = str(v.tls.ca_file) if v.tls.ca_file else None
        options["ssl_certfile"] = str(v.tls.cert_file) if v.tls.cert_file else None
        options["ssl_keyfile"] = str(v.tls.key_file) if v.tls.key_file else None
    return Valkey.from_url(settings.valkey_url(), **options)


async def check_valkey_access(redis: Valkey, settings: JetsourceSettings) -> None:
    """Raise AccessDeniedError when Valkey refuses this client's credentials (or its
    certificate does not verify against ``VALKEY__TLS__CA_FILE``): a setting to fix,
    which no waiting cures. A Valkey that is merely down is logged and waited for.
    Every service that reads Valkey asks this at start: the process query service and
    the ingest did not, started, and reported "valkey does not answer" for ever."""
    where = f"Valkey at {redact_url(settings.valkey_url())}"
    try:
        # Bounded: a Valkey that does not answer at all (a dropped route) is waited for
        # by the service, not by its start (the ingest takes webhooks without it).
        await wait_for(redis.ping(), min(settings.valkey.socket_timeout_s, 2.0))
    except (valkey_errors.AuthenticationError, valkey_errors.ResponseError) as exc:
        if not isinstance(exc, valkey_errors.AuthenticationError) and not any(
            code in str(exc).upper() for code in ("NOAUTH", "WRONGPASS", "NOPERM")
        ):
            log.warning("valkey answered PING with an error: %s", exc)
            return
        raise AccessDeniedError(
            f"{where} refused this client: {str(exc).rstrip('. ')}; check "
            "JETSOURCE_VALKEY__USERNAME and "
            "JETSOURCE_VALKEY__PASSWORD"
        ) from exc
    except valkey_errors.ConnectionError as exc:
        if isinstance(exc.__context__, ssl.SSLCertVerificationError):
            raise AccessDeniedError(
                f"{where} refused this client: {exc.__context__}; check "
                "JETSOURCE_VALKEY__TLS__CA_FILE, JETSOURCE_VALKEY__TLS__CERT_FILE and "
                "JETSOURCE_VALKEY__TLS__KEY_FILE"
            ) from exc
        log.warning("valkey not reachable yet: %s", exc)
    except Exception as exc:
        log.warning("valkey not reachable yet: %s", exc)


async def valkey_problem(redis: Valkey, timeout_s: float) -> str | None:
    """Why Valkey cannot be read now, for a health log line, or None when it answers a
    PING within ``timeout_s``: a refused login (a password rotated under a running
    service) named as such, with the settings to change; else what the PING met. Both
    were "valkey does not answer" / "not reachable"."""
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: it can drop a cancel
            await redis.ping()
        return None
    except (valkey_errors.AuthenticationError, valkey_errors.ResponseError) as exc:
        if isinstance(exc, valkey_errors.AuthenticationError) or any(
            code in str(exc).upper() for code in ("NOAUTH", "WRONGPASS", "NOPERM")
        ):
            return (
                f"valkey refused this client: {str(exc).rstrip('. ')}; check "
                "JETSOURCE_VALKEY__USERNAME and JETSOURCE_VALKEY__PASSWORD"
            )
        return f"valkey answered PING with an error: {exc}"
    except TimeoutError:
        return f"valkey does not answer within {timeout_s:g} s"
    except Exception as exc:
        return f"valkey does not answer: {exc}"[:300]


def transient(exc: BaseException) -> bool:
    """Whether a Valkey error is the store's (retried later), not the call's."""
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, valkey_errors.ResponseError) and str(exc).startswith(_TRANSIENT_CODES)


async def valkey_io(call: Awaitable[T]) -> T:
    try:
        return await call
    except (valkey_errors.ValkeyError, OSError) as exc:
        if transient(exc):
            raise TransientError(f"valkey: {type(exc).__name__}: {exc}") from exc
        raise


def group(events: Sequence[RecordedEvent]) -> OrderedDict[str, list[RecordedEvent]]:
    """Events per aggregate, in stream order within each."""
    out: OrderedDict[str, list[RecordedEvent]] = OrderedDict()
    for e in events:
        out.setdefault(e.aggregate_id, []).append(e)
    return out


def block_rest(outcome: Outcome, events: Sequence[RecordedEvent], reason: str) -> None:
    for e in events:
        outcome.waiting[e.stream_seq] = reason


def next_versions(
    version: int,
    events: Sequence[RecordedEvent],
    outcome: Outcome,
    last_seq: int = 0,
    refused: Collection[int] = (),
) -> list[RecordedEvent]:
    """The events (of one aggregate, in stream order) that continue it from
    ``version``, applied last from stream sequence ``last_seq`` (0: unknown, a row
    written before the sequence was kept), ``refused`` the sequences refused before.

    A version applied already is a redelivery (done) when it comes from the sequence
    it was applied from or an earlier one, and was not refused before; from a later
    sequence it is a second event for one version (the stream's readers name it as
    corrupt): refused (``outcome.failed``), the aggregate's later events waiting
    behind it. With ``last_seq`` unknown a repeat is taken for a redelivery, as it
    always was, until the aggregate's next event is applied (from then on its
    sequence is known). A gap makes the rest wait."""
    fresh: list[RecordedEvent] = []
    for i, e in enumerate(events):
        expected = version + len(fresh) + 1
        if e.version == expected:
            fresh.append(e)
            continue
        applied_from = fresh[-1].stream_seq if fresh else last_seq
        if e.version < expected and (
            not applied_from or (e.stream_seq <= applied_from and e.stream_seq not in refused)
        ):
            outcome.done.append(e.stream_seq)
            continue
        if e.version > expected:
            block_rest(outcome, events[i:], f"waiting for version {expected}")
        else:
            outcome.failed[e.stream_seq] = repeated_version(e, expected - 1)
            block_rest(outcome, events[i + 1 :], f"behind refused sequence {e.stream_seq}")
        break
    return fresh


def may_repeat(version: int, last_seq: int, events: Sequence[RecordedEvent]) -> bool:
    """Whether ``next_versions`` needs the aggregate's refused sequences for these
    events: one of them repeats a stored version from at or below the stored
    sequence (a redelivery, unless refused before). Only then need they be read."""
    return bool(last_seq) and any(e.version <= version and e.stream_seq <= last_seq for e in events)


def repeated_version(e: RecordedEvent, position: int) -> str:
    """Why an event whose version was applied from an earlier sequence is refused."""
    return (
        f"it carries version {e.version} where {position + 1} belongs: version "
        f"{e.version} of {e.aggregate_id!r} was applied from an earlier stream sequence "
        f"(a second event for one version, not a redelivery)"
    )


def refused_seqs(raw: bytes | str | None) -> frozenset[int]:
    """The sequences kept in a ``refused`` hash field: " <seq> <seq> "."""
    return frozenset(int(s) for s in text(raw).split()) if raw else frozenset()


# Where an event stands against its aggregate's applied position, in an apply script
# (after ``p`` is set), for a model that applies event by event in Lua:
#   <p>:pos      hash id -> the version applied last
#   <p>:pseq     hash id -> the stream sequence it was applied from (absent in rows
#                written before it was kept: unknown, a repeated version is then
#                taken for a redelivery, as it was, until the next event is applied)
#   <p>:refused  hash id -> " <seq> <seq> ": the sequences ``place`` refused
# ``place`` answers 'apply' (the next version), 'done' (a redelivery: the version was
# applied from this or a later sequence), 'wait' (a gap, or behind an event of the
# aggregate refused or waiting in this call) or 'refuse': a version applied already,
# from a stream sequence above the one it was applied from, or refused before (what
# ``next_versions`` decides). A refusal is remembered: the runtime retries it with
# backoff, and a later event of the aggregate may be applied meanwhile, after which
# the retried one would look like a redelivery. ``advance`` records an applied event.
PLACE_LUA = """
local pos, last, blocked = {}, {}, {}
local function place(id, ver, seq, seqtext)
  if pos[id] == nil then
    pos[id] = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
    last[id] = tonumber(redis.call('HGET', p .. ':pseq', id) or '0')
  end
  if blocked[id] then return 'wait' end
  if ver == pos[id] + 1 then return 'apply' end
  if ver > pos[id] + 1 then
    blocked[id] = true
    return 'wait'
  end
  if last[id] == 0 then return 'done' end
  local seen = redis.call('HGET', p .. ':refused', id) or ' '
  local again = string.find(seen, ' ' .. seqtext .. ' ', 1, true) ~= nil
  if seq <= last[id] and not again then return 'done' end
  blocked[id] = true
  if not again then redis.call('HSET', p .. ':refused', id, seen .. seqtext .. ' ') end
  return 'refuse'
end
local function advance(id, ver, seq, seqtext)
  redis.call('HSET', p .. ':pos', id, ver)
  redis.call('HSET', p .. ':pseq', id, seqtext)
  pos[id], last[id] = ver, seq
end
"""

# Remember refused sequences (``id`` -> " <seq> <seq> " in ``<p>:refused``), each once.
REMEMBER_REFUSED_LUA = """
local function remember_refused(id, seqtext)
  local seen = redis.call('HGET', p .. ':refused', id) or ' '
  if string.find(seen, ' ' .. seqtext .. ' ', 1, true) == nil then
    redis.call('HSET', p .. ':refused', id, seen .. seqtext .. ' ')
  end
end
"""


def script_outcome(
    events: Sequence[RecordedEvent],
    applied: int,
    waiting: Sequence[bytes],
    refused: Sequence[bytes],
    waiting_reason: str = "waiting for the previous version",
) -> Outcome:
    """The outcome of an apply script built on ``PLACE_LUA`` that answered
    ``{applied, waiting, refused}``: the sequences left waiting, and (sequence,
    position) pairs of those refused."""
    wait = {int(s) for s in waiting}
    refuse = {int(refused[i]): int(refused[i + 1]) for i in range(0, len(refused), 2)}
    outcome = Outcome(applied=int(applied))
    behind: dict[str, int] = {}
    for e in events:
        seq = e.stream_seq
        if seq in refuse:
            outcome.failed[seq] = repeated_version(e, refuse[seq])
            behind.setdefault(e.aggregate_id, seq)
        elif seq in wait:
            first = behind.get(e.aggregate_id)
            outcome.waiting[seq] = (
                f"behind refused sequence {first}" if first is not None else waiting_reason
            )
        else:
            outcome.done.append(seq)
    return outcome


def skipped(aggregate_id: str, version: int, stream_seq: int, time_ns: int) -> RecordedEvent:
    """A stand-in for a discarded dead letter: applying it only advances the version."""
    return RecordedEvent(
        EventEnvelope(aggregate_id=aggregate_id, aggregate_version=version, event_type="Skipped"),
        UnknownEvent("Skipped", 0, b"", "discarded dead letter"),
        stream_seq,
        time_ns,
    )


# The end of every apply script: count what was applied and move the checkpoint, in the
# same script (so in the same atomic step) as the effects.
CHECKPOINT_LUA = """
if applied > 0 then
  redis.call('HINCRBY', p .. ':meta', 'applied', applied)
  local cp = tonumber(redis.call('HGET', p .. ':meta', 'checkpoint') or '0')
  if maxseq > cp then redis.call('HSET', p .. ':meta', 'checkpoint', maxseq) end
end
"""


# -- the birth mark ---------------------------------------------------------------------
#
# A model version's effects live in Valkey; how far it got lives in its JetStream
# consumer. Valkey emptied (FLUSHALL, a restart without persistence, a new server)
# left the consumer at the head and the model empty: it stayed silently partial for
# good (only aggregates with new events came back, their gaps filled from the stream)
# while `projector status` said live, lag 0. So each version keeps a birth mark,
# ``<ns>:born`` (a random token written when the worker first takes the version), and
# every script that writes it first checks that the mark is the one its worker took:
# into an emptied store nothing is written (no aggregate half there, no checkpoint
# from nowhere), the write raises ``StoreLost`` and the worker builds the version
# again from its replay start. Reads do not check it.

MARK_PRELUDE = """
local __mark_key = table.remove(KEYS)
local __mark = table.remove(ARGV)
if redis.call('GET', __mark_key) ~= __mark then
  return redis.error_reply('JETSOURCE_LOST ' .. __mark_key)
end
"""
MARK_SUFFIX = ":born"


class BirthMark(Mark):
    """A Valkey model version's mark: the key ``<ns>:born``, checked by every write
    script (``MARK_PRELUDE``)."""

    def __init__(self, redis: Any, key: str) -> None:
        super().__init__()
        self.redis = redis
        self.key = key

    async def stored(self) -> str | None:
        raw = await valkey_io(self.redis.get(self.key))
        return text(raw) if raw is not None else None

    async def _keep_or_store(self, token: str) -> None:
        await valkey_io(self.redis.set(self.key, token, nx=True))


class GuardedScript:
    """A registered script whose prelude (``MARK_PRELUDE``, ``FENCE_PRELUDE``) takes
    one more key and argument, appended last, and refuses with ``tag`` when they do
    not match what is stored: the script writes nothing and ``refused()`` is raised."""

    prelude = ""
    tag = ""

    def __init__(self, redis: Any, script_text: str) -> None:
        self._script = redis.register_script(self.prelude + script_text)

    async def guard(self) -> tuple[str, str]:
        """The key and the argument the prelude compares."""
        raise NotImplementedError

    def refused(self) -> Exception:
        raise NotImplementedError

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Sequence[Any] | None = None,
        client: Any = None,
    ) -> Any:
        key, arg = await self.guard()
        try:
            return await self._script(
                keys=[*(keys or []), key], args=[*(args or []), arg], client=client
            )
        except valkey_errors.ResponseError as exc:
            if self.tag in str(exc):
                raise self.refused() from exc
            raise


class MarkedScript(GuardedScript):
    """Writes only while the model's birth mark is the one expected (``StoreLost``
    otherwise)."""

    prelude = MARK_PRELUDE
    tag = "JETSOURCE_LOST"

    def __init__(self, redis: Any, script_text: str, mark: BirthMark) -> None:
        super().__init__(redis, script_text)
        self._mark = mark

    async def guard(self) -> tuple[str, str]:
        return self._mark.key, await self._mark.expect()

    def refused(self) -> Exception:
        return StoreLost(
            f"{self._mark.key} is gone or another one: the model's store was emptied or replaced"
        )


class ValkeyModel:
    """What both Valkey models share: namespace, checkpoint, digest, drop, and the
    birth mark its write scripts check (``write_script``)."""

    spec: ModelSpec

    def __init__(self, spec: ModelSpec, redis: Valkey, prefix: str) -> None:
        self.spec = spec
        self.redis = redis
        self.ns = f"{prefix}:{spec.name}:v{spec.version}"
        self.mark = BirthMark(redis, self.ns + MARK_SUFFIX)

    def write_script(self, script_text: str) -> MarkedScript:
        """A script that writes the model: refused (``StoreLost``) once the store no
        longer holds this version's birth mark."""
        return MarkedScript(self.redis, script_text, self.mark)

    async def birth_mark(self) -> str | None:
        return await self.mark.stored()

    async def take_birth_mark(self) -> str:
        """Keep or make the mark and expect it; what this process remembers of the
        store is forgotten (an emptied store holds none of it)."""
        self.forget()
        return await self.mark.take()

    def forget(self) -> None:
        """Drop what this process remembers of the stored model (a cache)."""

    async def store_warning(self) -> str | None:
        """What in the server's configuration loses the model's keys silently: a
        ``maxmemory`` with an ``allkeys-*`` policy evicts them (no model key has a
        TTL, so ``volatile-*`` evicts none), and no birth mark can tell a key evicted
        from one never written. None when Valkey does not say (INFO refused)."""
        try:
            info = await valkey_io(self.redis.info("memory"))
        except (TransientError, valkey_errors.ResponseError):
            return None
        limit = int(info.get("maxmemory") or 0)
        policy = str(info.get("maxmemory_policy") or "noeviction")
        if limit and policy.startswith("allkeys"):
            return (
                f"Valkey evicts keys at maxmemory ({limit} bytes, maxmemory-policy "
                f"{policy}): read model keys may vanish silently, leaving the model "
                "partial; set maxmemory-policy noeviction (writes then wait for memory)"
            )
        return None

    async def store_lost(self) -> bool:
        """Whether the stored birth mark is no longer the one this model's writes
        expect (only once one is expected)."""
        return await self.mark.lost()

    async def checkpoint(self) -> Checkpoint:
        meta = await valkey_io(self.redis.hgetall(f"{self.ns}:meta"))
        return Checkpoint(int(meta.get(b"checkpoint", 0)), int(meta.get(b"applied", 0)))

    async def position(self, aggregate_id: str) -> int:
        return int(await valkey_io(self.redis.hget(f"{self.ns}:pos", aggregate_id)) or 0)

    async def _keys(self) -> list[bytes]:
        return sorted([k async for k in self.redis.scan_iter(match=f"{self.ns}:*", count=1000)])

    async def digest(self) -> str:
        """sha256 over every key (without the namespace) and its content."""
        h = hashlib.sha256()
        cut = len(self.ns) + 1
        for key in await valkey_io(self._keys()):
            if key.endswith(MARK_SUFFIX.encode()):
                continue  # a random token: not content
            if key.endswith(b":meta"):
                meta = await self.redis.hgetall(key)
                content: Any = {"applied": int(meta.get(b"applied", 0))}
            else:
                kind = text(await self.redis.type(key))
                if kind == "string":
                    content = await self.redis.get(key)
                elif kind == "hash":
                    content = sorted((await self.redis.hgetall(key)).items())
                elif kind == "zset":
                    content = await self.redis.zrange(key, 0, -1, withscores=True)
                else:
                    content = kind
            h.update(key[cut:] + b"\0" + repr(content).encode() + b"\n")
        return h.hexdigest()

    async def size(self) -> int:
        """How many keys the model version holds."""
        return len(await valkey_io(self._keys()))

    async def drop(self) -> int:
        keys = await valkey_io(self._keys())
        for i in range(0, len(keys), 500):
            await self.redis.unlink(*keys[i : i + 500])
        return len(keys)

    async def close(self) -> None:
        await self.redis.aclose()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- fencing (partitioned workers) -----------------------------------------------------

# Put in front of every script a fenced model registers: the fence key and the token
# come last (KEYS, ARGV), are taken off, and nothing is written unless the stored
# token is this worker's. Scripts see KEYS and ARGV as they were called.
FENCE_PRELUDE = """
local __fence_key = table.remove(KEYS)
local __fence_token = table.remove(ARGV)
if redis.call('GET', __fence_key) ~= __fence_token then
  return redis.error_reply('JETSOURCE_FENCED ' .. __fence_key)
end
"""
# Raise the stored token to the new owner's (never lower it).
_FENCE_CLAIM = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('GET', KEYS[1])
"""


def fence_key(prefix: str, group: str, partition: int) -> str:
    return f"{prefix}:__fence__:{group}:{partition}"


class FencedScript(GuardedScript):
    """Writes nothing once another worker holds the fence (``FencedError``)."""

    prelude = FENCE_PRELUDE
    tag = "JETSOURCE_FENCED"

    def __init__(self, redis: Valkey, text: str, key: str, fence: Fence) -> None:
        super().__init__(redis, text)
        self._key = key
        self._fence = fence

    async def guard(self) -> tuple[str, str]:
        return self._key, str(self._fence.token)

    def refused(self) -> Exception:
        return FencedError(
            f"partition {self._fence.partition}: token {self._fence.token} "
            f"is no longer the stored one ({self._key})"
        )


class FencedValkey:
    """The Valkey client as a partition worker's model sees it: every script it
    registers is fenced (writes go through scripts: one atomic step each); reads and
    everything else go to the shared client, which it never closes."""

    def __init__(self, redis: Valkey, fence: Fence, prefix: str) -> None:
        self._redis = redis
        self._fence = fence
        self._key = fence_key(prefix, fence.group, fence.partition)
        self._claim = redis.register_script(_FENCE_CLAIM)
        fence.claims.append(self.claim)

    async def claim(self) -> None:
        stored = await valkey_io(self._claim(keys=[self._key], args=[self._fence.token]))
        if int(stored) != self._fence.token:
            raise FencedError(
                f"partition {self._fence.partition}: a newer token ({int(stored)}) is stored"
            )

    def register_script(self, text: str) -> FencedScript:
        return FencedScript(self._redis, text, self._key, self._fence)

    async def aclose(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)
