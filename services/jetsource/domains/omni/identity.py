"""The identity service: a provider handle (a phone number, a Discord user id) in, a
stable identity id out.

- Event-sourced: each identity is an aggregate (``idn-...``) with ``IdentityCreated``,
  ``ExternalIdLinked`` and ``IdentitiesMerged``.
- Who holds a handle follows from the events (``identity_rules``): the identity of
  the handle's assignment of the highest order (an ``ExternalIdLinked`` of it, or the
  ``IdentitiesMerged`` record kept by the identity receiving a merged one's handles);
  the order is the stream sequence, 0 for a first contact's automatic link, so an
  admin's explicit link is never undone by a first contact that raced it. Two links
  of one handle at once are both recorded, one after the other in the stream, and the
  later one holds it; the read models and a rebuild take the same rule.
- Merges: the merged identity's record first (at its version), then the receiver's,
  at the receiver's version: the survivor, or the live end of its chain of merges
  when it was merged meanwhile. A merge that would close a cycle (its survivor's
  chain of earlier merges leads back to it: two merged into each other at once) is
  void, its identity live (``_closes_cycle``; the read model decides it the same way).
- The handle's NATS KV key (bucket ``OMNI_HANDLES``) is a cache of that: the entry's
  value is the identity id alone (what the previous release writes and reads, so
  both run side by side in a rolling upgrade and a rollback reads the bucket), and the
  stream sequence of the assignment travels in the entry's header
  ``Jetsource-Assignment-Seq`` (none: written by the previous release, order 0; a first
  contact's is marked ``Jetsource-Assignment-Kind: first-contact``, order 0).
  Written only forward (a compare-and-set on the entry's revision that never replaces
  a later sequence by an earlier one), so writers finishing in any order leave the
  latest. nats-py's KV entries carry no headers, so an entry is read as the last
  message on ``$KV.<bucket>.<key>`` (``STREAM.MSG.GET``) and written by a publish
  there with ``Nats-Expected-Last-Subject-Sequence``. An earlier owner put back by a
  previous release's writer (a plain value over a later assignment) is settled
  forward again by the services following the stream. Every writer settles the entry
  after its append; a writer stopped between the two (a crash, a NATS error) is
  finished by every started service, which follows the link and merge events from the
  stream's start (an ordered consumer), and by the next link or merge of the handle,
  which finds its own history ahead of the bucket.
- One identity per handle at first contact, even when two ingress processes meet a
  handle at the same moment: its identity id is derived from the handle and its
  events carry derived event ids, so racing writers write the same identity once (the
  event store's subject check and ``Nats-Msg-Id``), and a crash between the events and
  the bucket is finished by the next resolve.
- Cached per process; the cache follows the bucket (every put is also published on
  ``$KV.<bucket>.<key>``), so an admin's link or merge reaches every ingress at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, ConnectionReconnectingError
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from jetsource._gen.omni.v1.lifecycle_pb2 import (
    ExternalIdLinked,
    IdentitiesMerged,
    IdentityCreated,
)
from jetsource.core.aio import honour_cancel, stop_task
from jetsource.core.envelope import NO_STREAM, NewEvent, RecordedEvent
from jetsource.core.errors import ConcurrencyError, ValidationError
from jetsource.core.ids import uuid7, validate_aggregate_id
from jetsource.core.printable import (
    ID_TAKES,
    LINES_TAKE,
    UNSAFE,
    as_one_line,
    lf_lines,
    not_id_at,
    not_lines_at,
    not_one_line_at,
    refused_at,
)
from jetsource.domains.omni.events import (
    EXTERNAL_ID_LINKED,
    IDENTITIES_MERGED,
    first_contact_identity,
    handle_key,
    handle_name,
    is_identity,
    parse_handle_key,
    stable_uuid,
)
from jetsource.domains.omni.identity_rules import (
    FIRST_CONTACT,
    assignment_order,
    assignments,
)
from jetsource.domains.omni.normalize.common import MAX_HANDLE, has_surrogate
from jetsource.domains.omni.settings import OmniOptions
from jetsource.eventstore import jsapi, refusals
from jetsource.eventstore.jetstream import JetStreamEventStore, void_prefix
from jetsource.eventstore.jsapi import JsApiError, OutMessage

log = logging.getLogger("jetsource.omni.identity")
MAX_EXTERNAL_ID = MAX_HANDLE  # the normalizers refuse a longer handle, naming its field
LINK_ATTEMPTS = 5  # a link re-checks the identity when it changed meanwhile
MERGE_ATTEMPTS = 20  # a merge's record re-walks the chain when its end moved meanwhile
MAX_CHAIN = 10_000  # merges followed from one identity (a guard: chains are a forest)
# An operator's free text (the CLI's --name, --actor, --reason): refused beyond these,
# naming the field. A provider's display name is cut to MAX_NAME instead (a webhook is
# accepted with what it carries).
MAX_NAME, MAX_ACTOR, MAX_REASON = 200, 100, 10_000


def check_text(
    value: str, field: str, limit: int, lines: bool = False, ident: bool = False
) -> None:
    """At most ``limit`` characters of one line of printable text (``lines``: of
    many lines, tabs and line breaks): an operator's --name and --actor were taken with
    any control character (an ESC recoloured the terminal that listed them, a CR LF
    forged a line in a log), and --reason with a NUL or an ESC. ``value`` is checked as
    given, so a refusal's position is the one in the text the user typed; the limit is
    of the text stored (``lines``: each line break as LF, :func:`lf_lines`). ``ident``:
    a name the operator chooses for who did it (--actor), refused with a bidi control
    too (:data:`NOT_ID`)."""
    size = len(lf_lines(value)) if lines else len(value)
    if size > limit:
        raise ValidationError(f"{field} is {size} characters; at most {limit}", field=field)
    _check_encodable(value, field)
    if ident:
        at, takes = not_id_at(value), ID_TAKES
    else:
        at = not_lines_at(value) if lines else not_one_line_at(value)
        takes = LINES_TAKE if lines else "one line of printable text"
    if at is not None:
        raise ValidationError(
            f"{field} holds {refused_at(value, at)}: it takes {takes}",
            field=field,
        )


def _check_encodable(value: str, field: str) -> None:
    """A lone surrogate (from a command line's undecodable bytes, or a JSON escape) has
    no UTF-8 encoding: refused naming the field, not a failure while it is stored."""
    if has_surrogate(value):
        raise ValidationError(
            f"{field} holds a lone UTF-16 surrogate (bytes that were not UTF-8?), which is "
            "no Unicode character",
            field=field,
        )


def check_identity_id(identity_id: str, field: str) -> None:
    """An identity id (``idn-...``) the store can hold, else refused naming ``field`` (the
    argument the caller gave it as: the store's own check named ``aggregate_id``)."""
    if not is_identity(identity_id):
        raise ValidationError(f"{field} {identity_id[:80]!r} is not an identity id", field=field)
    validate_aggregate_id(identity_id, field)


class IdentityNotFoundError(ValidationError):
    """No identity with that id has been recorded."""


@dataclass(frozen=True)
class Resolved:
    identity_id: str
    created: bool  # this call wrote its first-contact events


# The providers whose webhooks the ingress serves: the only ones a handle can name (a
# link of "telegram:1" or "WhatsApp:1" was recorded, and no webhook or read reaches it).
PROVIDERS = ("whatsapp", "discord")


def check_handle(provider: str, external_id: str) -> None:
    if provider not in PROVIDERS:
        raise ValidationError(
            f"provider {provider[:40]!r} is not a provider (one of {', '.join(PROVIDERS)})",
            field="provider",
        )
    if not external_id or len(external_id) > MAX_EXTERNAL_ID:
        raise ValidationError(
            f"external id must be 1..{MAX_EXTERNAL_ID} characters", field="external_id"
        )
    _check_encodable(external_id, "external_id")


def check_linked_handle(provider: str, external_id: str) -> None:
    """An operator's handle for a link: a handle a webhook can carry. Refused naming
    ``external_id``: spaces at its ends, control characters, and a WhatsApp number
    written with ``+`` (handles are the number's digits, as the Cloud API's ``wa_id``):
    such a link was recorded and matched no webhook, ever."""
    check_handle(provider, external_id)
    if external_id != external_id.strip():
        raise ValidationError("external_id has spaces at its start or end", field="external_id")
    if UNSAFE.search(external_id) or not_one_line_at(external_id) is not None:
        raise ValidationError(
            "external_id holds control characters, line separators or bidi marks",
            field="external_id",
        )
    if provider == "whatsapp" and external_id.startswith("+"):
        raise ValidationError(
            f"a WhatsApp handle is the number's digits without '+' (as the Cloud API's "
            f"wa_id): {external_id[1:40]}",
            field="external_id",
        )
    if provider == "whatsapp" and "@" in external_id:
        # An Evolution JID as its API shows it: the webhooks' handle is the number's
        # digits for a person, the JID with its server in lower case otherwise.
        user, _, server = external_id.partition("@")
        if server.lower() in ("s.whatsapp.net", "c.us"):
            raise ValidationError(
                f"a WhatsApp person's handle is the number's digits, without the JID's "
                f"server or device (as the webhooks give it): {user.split(':', 1)[0][:40]}",
                field="external_id",
            )
        if server != server.lower():
            raise ValidationError(
                f"a JID's server is in lower case in a handle (as the webhooks give it): "
                f"{user[:40]}@{server.lower()[:40]}",
                field="external_id",
            )


# The header of a handle's bucket entry carrying the stream sequence of its assignment.
ASSIGNMENT_SEQ = "Jetsource-Assignment-Seq"
# ... and the one marking a first contact's (order 0: any explicit assignment outranks it).
ASSIGNMENT_KIND, FIRST_CONTACT_KIND = "Jetsource-Assignment-Kind", "first-contact"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
# The server's "wrong last sequence" (10164: the same, as a constant error).
WRONG_LAST_SEQUENCE = (jsapi.ERR_WRONG_LAST_SEQUENCE, 10164)


def entry_value(identity_id: str, order: int, seq: int = 0) -> tuple[bytes, dict[str, str]]:
    """A handle's bucket entry: the identity id as its value (what the previous release
    reads), the stream sequence of the assignment in its header. A first contact's
    (``order`` 0, its sequence ``seq``) is marked as such: its order is 0."""
    headers = {ASSIGNMENT_SEQ: str(seq or order)}
    if order == 0 and seq:
        headers[ASSIGNMENT_KIND] = FIRST_CONTACT_KIND
    return identity_id.encode(), headers


def parse_entry(value: bytes | None, headers: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(identity id, order) of a bucket entry; ('', -1) for none or a delete or purge
    marker. The order is the assignment's stream sequence, 0 for a first contact's. An
    entry without the header (written by the previous release, a plain ``kv.put`` of
    the identity id) counts as order 0; so does a bad header. A value ``<id>@<seq>``
    (written by development builds between the two encodings) is read as such."""
    h = headers or {}
    if not value or h.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in h:
        return "", -1
    text = value.decode("utf-8", "replace")
    if h.get(ASSIGNMENT_KIND) == FIRST_CONTACT_KIND:
        return text, 0
    seq = h.get(ASSIGNMENT_SEQ, "").strip()
    if seq:
        return text, int(seq) if seq.isdigit() else 0
    identity_id, _, legacy = text.partition("@")
    return identity_id, int(legacy) if legacy.isdigit() else 0


@dataclass(frozen=True)
class Entry:
    """A handle's bucket entry as read: its owner and assignment sequence (``''``, -1:
    none) and its revision (the stream sequence of the last message on its subject, a
    delete marker's included; 0: the key was never written)."""

    owner: str
    seq: int
    revision: int


@dataclass
class _MergeFacts:
    """What an identity's history says of merges, as far as it was read (``last_seq``,
    ``last_version``): ``ended``, (survivor, stream sequence) of each record of a merge
    of this identity; ``kept``, merged identity -> stream sequences of the records this
    identity keeps of merges into it. Read on from where it was left, each admin call
    reads only the events recorded since (a survivor of 800 merges was read whole four
    times per merge: building one identity was quadratic). Voids are looked up when the
    facts are used; an event voided before it was read is never in them."""

    last_seq: int = 0
    last_version: int = 0
    ended: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    kept: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # handle key -> the highest order of the identity's own assignments of it
    assigned: dict[str, int] = dataclasses.field(default_factory=dict)


MERGE_FACTS_KEPT = 4096  # identities whose merge facts are kept (LRU)


class IdentityService:
    def __init__(self, nc: NATS, store: JetStreamEventStore, options: OmniOptions) -> None:
        self._nc = nc
        self._store = store
        self._o = options
        self._kv: KeyValue | None = None
        # key -> (identity, the sequence of its assignment): a reply read before a later
        # update was heard must not put the earlier owner back
        self._cache: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._watch: Any = None
        self._void_watch: Any = None
        # stream sequences an operator voided (heard here: the store's own list may
        # hear one a moment later)
        self._voided: set[int] = set()
        self._follow: list[Any] = []  # the ordered consumers settling the bucket
        self._worker: asyncio.Task[None] | None = None
        self._known: dict[str, int] = {}  # key -> sequence the bucket holds at least
        # key -> the identity of the assignment at _known's sequence (when heard): an
        # earlier owner a previous release's writer puts back is settled forward again
        self._owners: dict[str, str] = {}
        self._replies: jsapi.Replies | None = None
        self._repairs: set[asyncio.Task[None]] = set()
        self._unvoids: set[str] = set()  # handles to settle again after a void
        # identity -> what its history says of merges, read on from where it was left
        self._merge_facts: OrderedDict[str, _MergeFacts] = OrderedDict()
        self._unvoider: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0

    # -- set-up ---------------------------------------------------------------------

    async def kv(self) -> KeyValue:
        if self._kv is None:
            js = self._nc.jetstream()

            async def find_or_create() -> KeyValue:
                try:
                    return await js.key_value(self._o.identity_bucket)
                except BucketNotFoundError:
                    return await js.create_key_value(
                        bucket=self._o.identity_bucket, history=5, replicas=self._o.raw_replicas
                    )

            # Both unanswered while a cluster has no meta leader: waited for, bounded.
            self._kv = await jsapi.create_waiting(
                find_or_create,
                f"KV_{self._o.identity_bucket}",
                self._o.raw_replicas,
                "bucket",
            )
        return self._kv

    # -- the bucket's entries, with their headers -------------------------------------

    @property
    def _stream(self) -> str:
        return f"KV_{self._o.identity_bucket}"

    def _subject(self, key: str) -> str:
        return f"$KV.{self._o.identity_bucket}.{key}"

    @property
    def _timeout(self) -> float:
        return self._store.settings.request_timeout_s

    async def _api(self) -> jsapi.Replies:
        await self.kv()
        if self._replies is None:
            self._replies = jsapi.Replies(self._nc)
        await self._replies.start()
        return self._replies

    async def _read(self, key: str) -> Entry:
        """The handle's entry: the last message on its subject, from the stream's leader
        (``STREAM.MSG.GET``, as nats-py's ``kv.get`` reads it: nats-py makes buckets
        without direct gets, and the previous release made this one)."""
        request = {"last_by_subj": self._subject(key)}
        with refusals.writes_to(self._stream, self._missing):
            raw = await jsapi.leader_get(await self._api(), self._stream, request, self._timeout)
        if raw is None:
            return Entry("", -1, 0)
        owner, seq = parse_entry(raw.data, raw.headers)
        return Entry(owner, seq, raw.seq)

    async def _write(
        self, key: str, identity_id: str, order: int, revision: int, seq: int = 0
    ) -> bool:
        """Write the entry if the key's last revision is still ``revision`` (0: never
        written); False when it was written meanwhile."""
        value, headers = entry_value(identity_id, order, seq)
        headers[EXPECTED_LAST_SUBJECT_SEQ] = str(revision)
        message = OutMessage(self._subject(key), value, headers)
        try:
            # Gone, full or sealed: named (503 / UNAVAILABLE), not a 500.
            with refusals.writes_to(self._stream, self._missing):
                await jsapi.publish(await self._api(), message, self._timeout)
        except JsApiError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    @property
    def _missing(self) -> str:
        return (
            f"the handles bucket {self._o.identity_bucket} is gone; restarting the service "
            "creates it again and settles it from the stream's links and merges"
        )

    def _heard(self, key: str, seq: int, owner: str) -> None:
        """The bucket holds ``key`` at ``seq`` at least (for ``owner``)."""
        if seq >= self._known.get(key, -1):
            self._known[key] = seq
            if seq > 0:
                self._owners[key] = owner

    async def start(self, follow: bool = True) -> None:
        """Open the bucket and follow its updates (keeps the cache current); with
        ``follow``, settle the bucket from the stream's links and merges too."""
        await self.kv()
        if self._watch is None and self._o.identity_cache_size:
            prefix = f"$KV.{self._o.identity_bucket}."

            async def updated(msg: Any) -> None:
                key = msg.subject[len(prefix) :]
                owner, seq = parse_entry(msg.data, msg.headers)
                if self._is_voided(self._known.get(key, -1)):
                    # settled again below a voided assignment (``_unvoid``)
                    self._known.pop(key, None)
                    self._owners.pop(key, None)
                    self._cache.pop(key, None)
                if not owner:
                    self._cache.pop(key, None)
                    return
                self._heard(key, seq, owner)
                if key in self._cache and self._cache[key][1] <= seq:
                    self._cache[key] = (owner, seq)
                if seq == 0:
                    self._repair(key, owner)

            self._watch = await self._nc.subscribe(f"{prefix}>", cb=updated)
        if follow and not self._follow:
            await self._watch_voids()
            await self._start_following()

    async def _start_following(self) -> None:
        """Settle the bucket from every link and merge in the stream, from its start
        and as they come (each once ``identity_settle_delay_s`` old, and only when the
        watched bucket has not shown it settled by then): a writer stopped between its
        append and the bucket is finished here (settling is idempotent, so every
        started service may do it)."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def heard(msg: Any) -> None:
            await queue.put(msg)

        cfg = self._store.settings
        js = self._nc.jetstream()
        for event_type in (EXTERNAL_ID_LINKED, IDENTITIES_MERGED):
            sub = await js.subscribe(
                f"{cfg.subject_prefix}.*.{event_type}",
                stream=cfg.stream,
                ordered_consumer=True,
                cb=heard,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
                idle_heartbeat=5.0,
            )
            self._follow.append(sub)
        self._worker = asyncio.create_task(self._settle_heard(queue))

    def _repair(self, key: str, owner: str) -> None:
        """A plain entry (a previous release's writer) naming another owner than the
        later assignment this service settled or heard: settle that one again (the
        compare-and-set sees sequence 0 below it). An assignment later than both is
        settled from the stream as it comes."""
        held = self._owners.get(key)
        at = self._known.get(key, -1)
        if not self._follow or held is None or held == owner or at <= 0 or self._is_voided(at):
            return

        async def settle() -> None:
            try:
                await self._settle(key, held, at)
            except Exception as exc:  # the next link or a restart settles it
                log.warning("settling handle %s again: %s", key, exc)

        task = asyncio.create_task(settle())
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _load_known(self) -> None:
        """What the bucket holds, in one pass (an ordered consumer delivering the last
        message of each key, headers included, as ``kv.watchall`` reads it): a start
        replays every link and merge, and a handle the bucket has at that sequence
        already needs no read."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        await self.kv()
        js = self._nc.jetstream()
        if (await js.stream_info(self._stream)).state.messages == 0:
            return
        prefix = f"$KV.{self._o.identity_bucket}."
        sub = await js.subscribe(
            f"{prefix}>",
            stream=self._stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=30)
                owner, seq = parse_entry(msg.data, msg.headers)
                if owner:
                    self._heard(msg.subject[len(prefix) :], seq, owner)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _settle_heard(self, queue: asyncio.Queue[Any]) -> None:
        me = asyncio.current_task()
        # Without the watch nothing tells this service its writer finished: no wait.
        settle_after = self._o.identity_settle_delay_s if self._watch is not None else 0.0
        try:
            await self._load_known()
        except Exception as exc:  # only an optimisation: each event reads its entry
            log.warning("reading the handles bucket: %s", exc)
        # entries naming an assignment voided while no service followed (a restart)
        for key in [k for k, at in self._known.items() if self._is_voided(at)]:
            self._start_unvoid(key)
        while self._worker is me:
            honour_cancel()  # a cancel the reads above swallowed
            msg = await queue.get()
            raw = jsapi.raw_of_delivery(msg)
            # A recent one waits for its writer's own bucket write (heard by the
            # watch: then ``settle_from`` has nothing to do); history does not wait.
            age = (time.time_ns() - raw.time_ns) / 1e9
            wait = min(settle_after, settle_after - age)
            if wait > 0:
                await asyncio.sleep(wait)
            delay = 0.1
            for attempt in itertools.count(1):
                try:
                    await self.settle_from(await self._store.open(raw))
                    break
                except asyncio.CancelledError:
                    raise
                except ValueError as exc:  # a message that does not decode: never will
                    if attempt >= 3:
                        log.error("handles of sequence %s not settled: %s", raw.seq, exc)
                        break
                    log.warning("settling handles of sequence %s: %s", raw.seq, exc)
                except Exception as exc:  # NATS away: tried again until it is back (a
                    # message passed over after a few tries left its handles unsettled
                    # until the next start)
                    log.warning("settling handles of sequence %s: %s", raw.seq, exc)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    # -- voids: an operator's void of a link or merge ---------------------------------

    def _is_voided(self, seq: int) -> bool:
        return seq > 0 and (seq in self._voided or self._store.known_voided(seq))

    async def _watch_voids(self) -> None:
        """Hear operators' voids (``jetsource repair void``) as they are recorded: a
        handle whose entry names the voided assignment is settled again to the latest
        one that stands. Its entry was written forward only, so nothing else ever put
        it back: after a void of an admin's link (and the rebuild that puts the read
        model right) FindIdentity named the first contact while every webhook of the
        handle was still stored with the voided link's identity."""
        prefix = void_prefix(self._store.settings.subject_prefix)

        async def seen(msg: Any) -> None:
            tail = msg.subject.rsplit(".", 1)[-1]
            if not tail.isdigit():
                return
            seq = int(tail)
            self._voided.add(seq)
            for key in [k for k, at in self._known.items() if at == seq]:
                self._start_unvoid(key)
            for key in [k for k, (_, at) in self._cache.items() if at == seq]:
                self._cache.pop(key, None)

        self._void_watch = await self._nc.subscribe(f"{prefix}.>", cb=seen)
        # and those recorded before (the store of a process just started may not have
        # read them yet): a start settles what they left (``_settle_heard``)
        cfg = self._store.settings
        try:
            api = await self._api()
            async for raw in jsapi.direct_get_batch(
                api, cfg.stream, f"{prefix}.>", 1, self._timeout
            ):
                tail = raw.subject.rsplit(".", 1)[-1]
                if tail.isdigit():
                    self._voided.add(int(tail))
        except Exception as exc:  # no stream yet, NATS away: the store asks when it matters
            log.warning("reading the omni stream's voids: %s", exc)

    def _start_unvoid(self, key: str) -> None:
        """Settle ``key`` again after a void: keys are gathered, so a void that touches
        many handles (a merge's) reads the stream's links and merges once for all of
        them, and a handle is settled by one task, however many voids named it."""
        self._unvoids.add(key)
        if self._unvoider is None or self._unvoider.done():
            task = asyncio.create_task(self._unvoid_pending())
            self._unvoider = task
            self._repairs.add(task)
            task.add_done_callback(self._repairs.discard)

    async def _unvoid_pending(self) -> None:
        """Until every gathered key is settled: tried again while NATS is away (at most
        every 5 s, until the service stops), not given up on after a few tries, or the
        handle named the voided identity until the next start."""
        delay = 0.1
        while self._unvoids:
            keys = set(self._unvoids)
            self._unvoids.clear()
            try:
                standing = await self._standing(keys)
                for key in sorted(keys):
                    await self._unvoid(key, standing[key])
                    keys.discard(key)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: tried again
                self._unvoids |= keys
                log.warning("settling %d handle(s) after a void: %s", len(keys), exc)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _standing(self, keys: set[str]) -> dict[str, tuple[str, int, int]]:
        """For each key, (identity, order, stream sequence) of the handle's latest
        assignment that no operator voided, ('', -1, 0) when none stands: every link and
        merge of the stream read once (a void is a rare operator act)."""
        cfg = self._store.settings
        best: dict[str, tuple[str, int, int]] = dict.fromkeys(keys, ("", -1, 0))
        api = await self._api()
        for event_type in (EXTERNAL_ID_LINKED, IDENTITIES_MERGED):
            subject = f"{cfg.subject_prefix}.*.{event_type}"
            async for raw in jsapi.direct_get_batch(api, cfg.stream, subject, 1, self._timeout):
                if self._is_voided(raw.seq):
                    continue
                record = await self._store.open(raw)
                order = assignment_order(record)
                for provider, external_id, identity_id in assignments(record):
                    key = handle_key(provider, external_id)
                    if key in best and order > best[key][1]:
                        best[key] = (identity_id, order, record.stream_seq)
        return best

    async def _unvoid(self, key: str, standing: tuple[str, int, int]) -> None:
        """Settle a handle whose entry names a voided assignment to the latest one that
        stands (a lower order than the entry's: the one rule the forward-only writes
        give way to), or delete it when none stands (the handle is met again as new)."""
        owner, order, seq = standing
        while True:
            entry = await self._read(key)
            if not self._is_voided(entry.seq):
                return  # settled meanwhile (another service, a new link)
            if owner:
                value, headers = entry_value(owner, order, seq)
            else:
                value, headers = b"", {"KV-Operation": "DEL"}
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(entry.revision)
            try:
                with refusals.writes_to(self._stream, self._missing):
                    await jsapi.publish(
                        await self._api(),
                        OutMessage(self._subject(key), value, headers),
                        self._timeout,
                    )
            except JsApiError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:
                    continue  # written meanwhile: look again
                raise
            break
        self._known.pop(key, None)
        self._owners.pop(key, None)
        self._cache.pop(key, None)
        if owner:
            self._heard(key, order, owner)

    async def settle_from(self, record: RecordedEvent) -> None:
        """What one stored event means for the bucket: its handles settled to its
        identity at its sequence; a merged identity's record of a merge finishes the
        merge (the survivor's record, written if it is missing)."""
        e = record.event
        if self._store.known_voided(record.stream_seq):
            return  # an operator voided it: the read models step over it too
        if isinstance(e, IdentitiesMerged) and record.aggregate_id == e.merged_id:
            await self._finish_merge(e, record.event_id, record.stream_seq)
            return
        order = assignment_order(record)
        for provider, external_id, identity_id in assignments(record):
            key = handle_key(provider, external_id)
            if self._known.get(key, -1) < order:
                await self._settle(key, identity_id, order, at_seq=record.stream_seq)

    async def _settle(
        self, key: str, identity_id: str, seq: int, absent: bool = False, at_seq: int = 0
    ) -> str:
        """The bucket says ``identity_id`` holds ``key`` from order ``seq`` on (its
        assignment's stream sequence; 0 for a first contact, whose sequence is
        ``at_seq``), unless it holds a higher one already; returns who holds it now. A
        compare-and-set on the entry's revision: every write raises the order it holds,
        so this ends. ``absent``: the caller found no entry just now (a first contact),
        so the create is tried before any read."""
        if self._is_voided(seq):
            return (await self._read(key)).owner  # an operator voided that assignment
        if absent and await self._write(key, identity_id, seq, 0, at_seq):
            self._heard(key, seq, identity_id)
            self._remember(key, identity_id, seq)
            return identity_id
        while True:
            entry = await self._read(key)
            owner, at = entry.owner, entry.seq
            if at >= seq:
                break
            if not await self._write(key, identity_id, seq, entry.revision, at_seq):
                continue  # written meanwhile: read it again
            owner, at = identity_id, seq
            break
        self._heard(key, at, owner)
        self._remember(key, owner, at)
        return owner

    async def close(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            # cancelled again while it runs: a library below may swallow one cancel
            await stop_task(worker)
        for sub in self._follow:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._follow = []
        await asyncio.gather(*(stop_task(t) for t in list(self._repairs)))
        if self._void_watch is not None:
            voids, self._void_watch = self._void_watch, None
            with contextlib.suppress(ConnectionClosedError, ConnectionReconnectingError):
                await voids.unsubscribe()
        if self._watch is not None:
            sub, self._watch = self._watch, None
            with contextlib.suppress(ConnectionClosedError, ConnectionReconnectingError):
                await sub.unsubscribe()
        if self._replies is not None:
            replies, self._replies = self._replies, None
            await replies.stop()

    def _remember(self, key: str, identity_id: str, seq: int) -> None:
        """Cache what a read or write found, unless a later assignment was heard."""
        if not self._o.identity_cache_size or self._known.get(key, -1) > seq:
            return
        cached = self._cache.get(key)
        if cached is None or cached[1] <= seq:
            self._cache[key] = (identity_id, seq)
        self._cache.move_to_end(key)
        while len(self._cache) > self._o.identity_cache_size:
            self._cache.popitem(last=False)

    def forget(self) -> None:
        """Empty the cache (benchmarks measure uncached resolution with it)."""
        self._cache.clear()

    # -- resolve ----------------------------------------------------------------------

    async def lookup(self, provider: str, external_id: str) -> str | None:
        """The identity a handle resolves to now, or None if it was never met."""
        check_handle(provider, external_id)
        key = handle_key(provider, external_id)
        cached = self._cache.get(key)
        if cached is not None:
            return cached[0]
        return (await self._read(key)).owner or None

    async def resolve(
        self,
        provider: str,
        external_id: str,
        instance: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        return (await self.resolve_full(provider, external_id, instance, metadata)).identity_id

    async def resolve_full(
        self,
        provider: str,
        external_id: str,
        instance: str,
        metadata: Mapping[str, str] | None = None,
    ) -> Resolved:
        check_handle(provider, external_id)
        key = handle_key(provider, external_id)
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            self._cache.move_to_end(key)
            return Resolved(cached[0], False)
        self.misses += 1
        entry = await self._read(key)
        if entry.owner:
            self._remember(key, entry.owner, entry.seq)
            return Resolved(entry.owner, False)
        # First contact: write the identity (the same one any racing writer writes),
        # then claim the handle for it.
        identity_id = first_contact_identity(provider, external_id)
        # The provider's display name (a WhatsApp profile name, a Discord global_name)
        # is kept, not refused as --name is: a control character or U+2028/U+2029 in it
        # (an ESC, a line break) is U+FFFD, so the name is one line as --name's is.
        name = as_one_line((metadata or {}).get("display_name", "")[:MAX_NAME])
        # Two appends, each idempotent by its derived event id (an atomic batch of two
        # costs several times one publish): a crash between them is finished by the
        # next resolve, which finds the first stored and writes the second.
        created = await self._store.append(
            identity_id,
            [
                NewEvent(
                    IdentityCreated(
                        identity_id=identity_id, display_name=name, created_by="first_contact"
                    ),
                    event_id=stable_uuid(identity_id, "created"),
                    source="jetsource-ingest",
                )
            ],
            NO_STREAM,
        )
        linked = await self._store.append(
            identity_id,
            [
                NewEvent(
                    ExternalIdLinked(
                        identity_id=identity_id,
                        provider=provider,
                        external_id=external_id,
                        instance=instance,
                        display_name=name,
                        linked_by=FIRST_CONTACT,
                    ),
                    event_id=stable_uuid(identity_id, "linked", provider, external_id),
                    source="jetsource-ingest",
                )
            ],
            1,
        )
        # A first contact's link has order 0: it claims the handle only while nobody
        # holds it, and an admin's link recorded meanwhile (before or after it in the
        # stream) holds it instead.
        claimed = await self._settle(key, identity_id, 0, True, linked.stream_seqs[-1])
        return Resolved(claimed, not created.duplicate and claimed == identity_id)

    # -- admin: link and merge --------------------------------------------------------------

    async def _require(self, identity_id: str, field: str) -> int:
        check_identity_id(identity_id, field)
        version = await self._store.last_version(identity_id)
        if version == 0:
            raise IdentityNotFoundError(f"no identity {identity_id!r}", field=field)
        return version

    async def _refuse_merged(self, identity_id: str, field: str) -> None:
        """Refused naming ``field`` when ``identity_id`` was merged into another: its
        history ended with the merge, and its handles are its survivor's."""
        edge = await self._merge_of(identity_id)
        if edge is not None:
            raise ValidationError(
                f"{field} {identity_id} was merged into {edge[0]} already", field=field
            )

    # -- merges: chains and cycles ------------------------------------------------------

    async def _facts(self, identity_id: str) -> _MergeFacts:
        """``identity_id``'s merge facts, read on to its latest event."""
        facts = self._merge_facts.pop(identity_id, None) or _MergeFacts()
        new = await self._store.read_aggregate(
            identity_id, from_version=facts.last_version + 1, from_seq=facts.last_seq + 1
        )
        for record in new:
            e = record.event
            if isinstance(e, IdentitiesMerged):
                if e.merged_id == identity_id:
                    facts.ended.append((e.survivor_id, record.stream_seq))
                else:
                    facts.kept.setdefault(e.merged_id, []).append(record.stream_seq)
            order = assignment_order(record)
            for provider, external_id, _ in assignments(record):
                key = handle_key(provider, external_id)
                facts.assigned[key] = max(facts.assigned.get(key, -1), order)
            facts.last_seq, facts.last_version = record.stream_seq, record.version
        self._merge_facts[identity_id] = facts
        while len(self._merge_facts) > MERGE_FACTS_KEPT:
            self._merge_facts.popitem(last=False)
        return facts

    async def _merge_of(
        self, identity_id: str, before: int | None = None, facts: _MergeFacts | None = None
    ) -> tuple[str, int] | None:
        """(survivor, stream sequence) of the merge that ended ``identity_id`` (of those
        recorded before ``before``), or None while it is live. A merge whose survivor's
        chain of earlier merges leads back to the merged identity (two merged into each
        other at once) would close a cycle: it is void (the later of the two in the
        stream), and its identity stays live."""
        if facts is None:
            facts = await self._facts(identity_id)
        for survivor_id, seq in list(facts.ended):
            if self._is_voided(seq):
                continue
            if before is not None and seq >= before:
                return None
            if not await self._closes_cycle(identity_id, survivor_id, seq):
                return survivor_id, seq
        return None

    async def _closes_cycle(self, merged_id: str, survivor_id: str, seq: int) -> bool:
        """Does the merge of ``merged_id`` into ``survivor_id`` at ``seq`` close a cycle:
        the survivor's chain through the merges recorded before ``seq`` reaches it."""
        current = survivor_id
        for _ in range(MAX_CHAIN):
            if current == merged_id:
                return True
            edge = await self._merge_of(current, before=seq)
            if edge is None:
                return False
            current = edge[0]
        raise ValidationError(f"more than {MAX_CHAIN} merges in a chain", field="survivor_id")

    async def end_of(self, identity_id: str) -> str:
        """The live identity at the end of ``identity_id``'s chain of merges (itself when
        it was never merged)."""
        current = identity_id
        for _ in range(MAX_CHAIN):
            edge = await self._merge_of(current)
            if edge is None:
                return current
            current = edge[0]
        raise ValidationError(f"more than {MAX_CHAIN} merges in a chain", field="identity_id")

    async def create(self, display_name: str = "", actor: str = "") -> str:
        """A new identity with no handle yet (link handles to it afterwards), created
        by ``admin:<actor>``."""
        from jetsource.core.ids import uuid7

        check_text(display_name, "name", MAX_NAME)
        check_text(actor, "actor", MAX_ACTOR, ident=True)

        identity_id = f"idn-{uuid7().replace('-', '')[:26]}"
        await self._store.append(
            identity_id,
            [
                NewEvent(
                    IdentityCreated(
                        identity_id=identity_id,
                        display_name=display_name,
                        created_by=f"admin:{actor}" if actor else "admin",
                    ),
                    source="jetsource-cli",
                )
            ],
            NO_STREAM,
        )
        return identity_id

    async def link(
        self, identity_id: str, provider: str, external_id: str, actor: str, instance: str = ""
    ) -> str:
        """Make a handle resolve to ``identity_id`` (moving it from the identity it had,
        if any). Returns the previous identity id ('' when the handle was new). An
        identity merged into another takes no handle (refused naming ``identity_id``):
        it would resolve to the merged identity, which no longer lists or moves with
        its survivor's handles. A link the bucket missed (its writer stopped after the
        append) is finished, not written again."""
        check_linked_handle(provider, external_id)
        check_text(actor, "actor", MAX_ACTOR, ident=True)
        if actor == FIRST_CONTACT:
            raise ValidationError(
                f"actor {FIRST_CONTACT!r} is reserved for the ingress's first contacts",
                field="actor",
            )
        key = handle_key(provider, external_id)
        for _ in range(LINK_ATTEMPTS):
            version = await self._require(identity_id, "identity_id")
            await self._refuse_merged(identity_id, "identity_id")
            entry = await self._read(key)
            previous, at = entry.owner, entry.seq
            if previous == identity_id:
                self._remember(key, identity_id, at)
                return previous
            # Our own history ahead of the bucket: a link of ours the bucket missed.
            # Our latest assignment of the handle, from the merge facts read on from
            # where they were left (reading the whole history made linking many
            # handles to one identity quadratic).
            ours = (await self._facts(identity_id)).assigned.get(key, -1)
            if ours > at:
                await self._settle(key, identity_id, ours)
                return previous
            event = ExternalIdLinked(
                identity_id=identity_id,
                provider=provider,
                external_id=external_id,
                instance=instance,
                previous_identity_id=previous,
                linked_by=actor,
            )
            try:
                # At the version checked: a merge (or another link) of the identity
                # meanwhile makes this check again, so no handle lands on an identity
                # merged after the check.
                result = await self._store.append(
                    identity_id, [NewEvent(event, source="jetsource-cli")], version
                )
            except ConcurrencyError:
                continue
            # A link of the handle to another identity at the same time is recorded
            # too; the later one in the stream holds the handle, here and everywhere.
            await self._settle(key, identity_id, result.stream_seqs[-1])
            return previous
        raise ConcurrencyError(identity_id, "the version checked", version)

    async def handles_of(self, identity_id: str, settle: bool = False) -> list[tuple[str, str]]:
        """The handles that resolve to ``identity_id`` now: those its history assigned
        to it, still pointing at it in the bucket (a handle linked away is not). With
        ``settle`` (a merge), each is settled first at its assignment, so one whose
        bucket write is still under way (another service finishing a merge into this
        identity) is counted."""
        check_identity_id(identity_id, "identity_id")
        records = await self._store.read_aggregate(identity_id)
        if not records:
            # None recorded: not an identity with no handle ('jetsource omni identity
            # handles idn-nope' answered an empty list, exit 0).
            raise IdentityNotFoundError(f"no identity {identity_id!r}", field="identity_id")
        linked: dict[tuple[str, str], int] = {}
        for record in records:
            for p, x, _ in assignments(record):
                linked[(p, x)] = max(linked.get((p, x), -1), assignment_order(record))
        out = []
        for (provider, external_id), order in linked.items():
            key = handle_key(provider, external_id)
            if settle:
                owner = await self._settle(key, identity_id, order)
            else:
                owner = (await self._read(key)).owner
            if owner == identity_id:
                out.append((provider, external_id))
        return out

    async def merge(
        self, survivor_id: str, merged_id: str, actor: str, reason: str = ""
    ) -> list[str]:
        """``merged_id`` becomes part of ``survivor_id``: its handles resolve to the
        survivor from now on, and the read models show one identity. Returns the handles
        moved. A merged identity is refused (naming the field) in another merge, the same
        one again included; that one finishes what an error or a crash left undone
        first (the survivor's record, the bucket), so a retry repairs and says why not.

        Racing merges: when the survivor is merged itself meanwhile (A into B while B
        into C), the handles go to the end of its chain (C), a live identity; when the
        survivor was merged into this very identity meanwhile (A into B while B into A),
        the later of the two in the stream would close a cycle: it is refused naming
        ``survivor_id`` after its record, which every reader takes as void."""
        check_text(actor, "actor", MAX_ACTOR, ident=True)
        # A line break as any tool writes it (a lone CR, CR CR LF) is one; what else
        # is no text is refused naming reason, at its position in the reason as given
        # (checked after the line breaks were made LF, a refusal past a CR LF named a
        # position one before the character's, per CR LF).
        check_text(reason, "reason", MAX_REASON, lines=True)
        reason = lf_lines(reason)
        if survivor_id == merged_id:
            raise ValidationError("an identity cannot be merged into itself", field="merged_id")
        await self._require(survivor_id, "survivor_id")
        merged_version = await self._require(merged_id, "merged_id")
        history = await self._store.read_aggregate(merged_id)
        done = history[-1] if history else None
        if (
            done is not None
            and isinstance(done.event, IdentitiesMerged)
            and done.event.merged_id == merged_id
        ):
            await self._finish_merge(done.event, done.event_id, done.stream_seq)
        for rid, field in ((survivor_id, "survivor_id"), (merged_id, "merged_id")):
            await self._refuse_merged(rid, field)
        handles = await self.handles_of(merged_id, settle=True)
        names = [handle_name(p, x) for p, x in handles]
        event = IdentitiesMerged(
            survivor_id=survivor_id, merged_id=merged_id, handles=names, actor=actor, reason=reason
        )
        # The merged identity's history ends here (expected version: a concurrent link to
        # it, or a merge into it, fails the merge instead of being lost); the survivor
        # (or the end of its chain) records it too.
        event_id = uuid7()
        result = await self._store.append(
            merged_id,
            [NewEvent(event, event_id=event_id, source="jetsource-cli")],
            merged_version,
        )
        if not await self._finish_merge(event, event_id, result.stream_seqs[-1]):
            raise ValidationError(
                f"survivor_id {survivor_id} was merged into {merged_id} at the same moment; "
                "that merge stands and this one, later in the stream, is void (nothing moved)",
                field="survivor_id",
            )
        return names

    async def _finish_merge(
        self, event: IdentitiesMerged, merged_event_id: str, merged_seq: int
    ) -> bool:
        """The record of a merge kept by the identity receiving the handles: the
        survivor, or the live end of its chain of merges when it was merged meanwhile
        (written when it is missing, at the receiver's version, so the receiver cannot
        be merged unseen in between; its event id is derived from the merged one's, so
        two finishing it write it once), then its handles settled in the bucket at that
        record's sequence (the one the read models move them at). False, writing
        nothing, for a merge that would close a cycle (void)."""
        for _ in range(MERGE_ATTEMPTS):
            target, seq, checked, version = event.survivor_id, 0, False, -1
            for _ in range(MAX_CHAIN):
                facts = await self._facts(target)
                found = [
                    at
                    for at in facts.kept.get(event.merged_id, ())
                    if target != event.merged_id and not self._is_voided(at)
                ]
                if found:  # written by whoever finished it (never for a void merge)
                    seq = found[-1]
                    break
                if not checked:
                    if await self._closes_cycle(event.merged_id, event.survivor_id, merged_seq):
                        return False
                    checked = True
                edge = await self._merge_of(target, facts=facts)
                if edge is not None:
                    target, version = edge[0], -1  # merged meanwhile: on to its survivor
                    continue
                if version < 0:
                    # the version, then its history again: nothing after it unseen
                    version = await self._store.last_version(target)
                    continue
                try:
                    result = await self._store.append(
                        target,
                        [
                            NewEvent(
                                event,
                                event_id=stable_uuid(merged_event_id, "survivor"),
                                source="jetsource-cli",
                            )
                        ],
                        version,
                    )
                except ConcurrencyError:
                    break  # the receiver moved (merged, linked): walk the chain again
                seq = result.stream_seqs[-1]
                break
            if seq:
                for name in event.handles:
                    provider, _, external_id = name.partition(":")
                    await self._settle(handle_key(provider, external_id), target, seq)
                return True
        raise ConcurrencyError(event.survivor_id, "the end of its chain of merges", 0)


__all__ = [
    "IdentityNotFoundError",
    "IdentityService",
    "Resolved",
    "assignments",
    "parse_handle_key",
]
