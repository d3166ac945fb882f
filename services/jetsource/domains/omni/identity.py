"""The identity service: a provider handle (a phone number, a Discord user id) in, a
stable identity id out.

- Event-sourced: each identity is an aggregate (``idn-...``) with ``IdentityCreated``,
  ``ExternalIdLinked`` and ``IdentitiesMerged``.
- One identity per handle, even when two ingress processes meet a handle at the same
  moment: the handle's NATS KV key (bucket ``OMNI_HANDLES``) is claimed with
  ``create()``, a compare-and-set that only one writer wins. A first contact's identity
  id is derived from the handle and its events carry derived event ids, so racing
  writers write the same identity once (the event store's subject check and
  ``Nats-Msg-Id``), and a crash between the events and the claim is finished by the
  next resolve.
- Cached per process; the cache follows the bucket (every put is also published on
  ``$KV.<bucket>.<key>``), so an admin's link or merge reaches every ingress at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, ConnectionReconnectingError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetsource._gen.omni.v1.lifecycle_pb2 import (
    ExternalIdLinked,
    IdentitiesMerged,
    IdentityCreated,
)
from jetsource.core.envelope import ANY, NO_STREAM, NewEvent
from jetsource.core.errors import ConcurrencyError, ValidationError
from jetsource.domains.omni.events import (
    first_contact_identity,
    handle_key,
    handle_name,
    is_identity,
    parse_handle_key,
    stable_uuid,
)
from jetsource.domains.omni.settings import OmniOptions
from jetsource.eventstore.jetstream import JetStreamEventStore

log = logging.getLogger("jetsource.omni.identity")
MAX_EXTERNAL_ID = 256
LINK_ATTEMPTS = 5  # a link re-checks the identity when it changed meanwhile
# An operator's free text (the CLI's --name, --actor, --reason): refused beyond these,
# naming the field. A provider's display name is cut to MAX_NAME instead (a webhook is
# accepted with what it carries).
MAX_NAME, MAX_ACTOR, MAX_REASON = 200, 100, 10_000


def check_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise ValidationError(f"{field} is {len(value)} characters; at most {limit}", field=field)


class IdentityNotFoundError(ValidationError):
    """No identity with that id has been recorded."""


@dataclass(frozen=True)
class Resolved:
    identity_id: str
    created: bool  # this call wrote its first-contact events


def check_handle(provider: str, external_id: str) -> None:
    if not provider or not provider.isidentifier():
        raise ValidationError(f"provider {provider[:40]!r} must be a plain name", field="provider")
    if not external_id or len(external_id) > MAX_EXTERNAL_ID:
        raise ValidationError(
            f"external id must be 1..{MAX_EXTERNAL_ID} characters", field="external_id"
        )


class IdentityService:
    def __init__(self, nc: NATS, store: JetStreamEventStore, options: OmniOptions) -> None:
        self._nc = nc
        self._store = store
        self._o = options
        self._kv: KeyValue | None = None
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._watch: Any = None
        self.hits = 0
        self.misses = 0

    # -- set-up ---------------------------------------------------------------------

    async def kv(self) -> KeyValue:
        if self._kv is None:
            js = self._nc.jetstream()
            try:
                self._kv = await js.key_value(self._o.identity_bucket)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(
                    bucket=self._o.identity_bucket, history=5, replicas=self._o.raw_replicas
                )
        return self._kv

    async def start(self) -> None:
        """Open the bucket and follow its updates (keeps the cache current)."""
        await self.kv()
        if self._watch is None and self._o.identity_cache_size:
            prefix = f"$KV.{self._o.identity_bucket}."

            async def updated(msg: Any) -> None:
                key = msg.subject[len(prefix) :]
                if key in self._cache:
                    if msg.data:
                        self._cache[key] = msg.data.decode()
                    else:
                        self._cache.pop(key, None)

            self._watch = await self._nc.subscribe(f"{prefix}>", cb=updated)

    async def close(self) -> None:
        if self._watch is not None:
            sub, self._watch = self._watch, None
            with contextlib.suppress(ConnectionClosedError, ConnectionReconnectingError):
                await sub.unsubscribe()

    def _remember(self, key: str, identity_id: str) -> None:
        if not self._o.identity_cache_size:
            return
        self._cache[key] = identity_id
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
            return cached
        kv = await self.kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return entry.value.decode()

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
            return Resolved(cached, False)
        self.misses += 1
        kv = await self.kv()
        try:
            entry = await kv.get(key)
            if entry.value:
                identity_id = entry.value.decode()
                self._remember(key, identity_id)
                return Resolved(identity_id, False)
        except KeyNotFoundError:
            pass
        # First contact: write the identity (the same one any racing writer writes),
        # then claim the handle for it.
        identity_id = first_contact_identity(provider, external_id)
        name = (metadata or {}).get("display_name", "")[:MAX_NAME]
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
        await self._store.append(
            identity_id,
            [
                NewEvent(
                    ExternalIdLinked(
                        identity_id=identity_id,
                        provider=provider,
                        external_id=external_id,
                        instance=instance,
                        display_name=name,
                        linked_by="first_contact",
                    ),
                    event_id=stable_uuid(identity_id, "linked", provider, external_id),
                    source="jetsource-ingest",
                )
            ],
            1,
        )
        try:
            await kv.create(key, identity_id.encode())
            claimed = identity_id
        except KeyWrongLastSequenceError:
            entry = await kv.get(key)
            claimed = entry.value.decode() if entry.value else identity_id
        self._remember(key, claimed)
        return Resolved(claimed, not created.duplicate and claimed == identity_id)

    # -- admin: link and merge --------------------------------------------------------------

    async def _require(self, identity_id: str, field: str) -> int:
        if not is_identity(identity_id):
            raise ValidationError(
                f"{field} {identity_id[:80]!r} is not an identity id", field=field
            )
        version = await self._store.last_version(identity_id)
        if version == 0:
            raise IdentityNotFoundError(f"no identity {identity_id!r}", field=field)
        return version

    async def _refuse_merged(self, identity_id: str, field: str) -> None:
        """Refused naming ``field`` when ``identity_id`` was merged into another: its
        history ended with the merge, and its handles are its survivor's."""
        for record in await self._store.read_aggregate(identity_id):
            e = record.event
            if isinstance(e, IdentitiesMerged) and e.merged_id == identity_id:
                raise ValidationError(
                    f"{field} {identity_id} was merged into {e.survivor_id} already",
                    field=field,
                )

    async def create(self, display_name: str = "", actor: str = "") -> str:
        """A new identity with no handle yet (link handles to it afterwards), created
        by ``admin:<actor>``."""
        from jetsource.core.ids import uuid7

        check_text(display_name, "name", MAX_NAME)
        check_text(actor, "actor", MAX_ACTOR)

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
        its survivor's handles."""
        check_handle(provider, external_id)
        check_text(actor, "actor", MAX_ACTOR)
        key = handle_key(provider, external_id)
        kv = await self.kv()
        for _ in range(LINK_ATTEMPTS):
            version = await self._require(identity_id, "identity_id")
            await self._refuse_merged(identity_id, "identity_id")
            previous = ""
            try:
                entry = await kv.get(key)
                previous = entry.value.decode() if entry.value else ""
            except KeyNotFoundError:
                pass
            if previous == identity_id:
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
                await self._store.append(
                    identity_id, [NewEvent(event, source="jetsource-cli")], version
                )
            except ConcurrencyError:
                continue
            await kv.put(key, identity_id.encode())
            self._remember(key, identity_id)
            return previous
        raise ConcurrencyError(identity_id, "the version checked", version)

    async def handles_of(self, identity_id: str) -> list[tuple[str, str]]:
        """The handles that resolve to ``identity_id`` now: those its history linked to
        it, still pointing at it in the bucket (a handle linked away is not)."""
        if not is_identity(identity_id):
            raise ValidationError(
                f"identity_id {identity_id[:80]!r} is not an identity id", field="identity_id"
            )
        kv = await self.kv()
        linked: list[tuple[str, str]] = []
        for record in await self._store.read_aggregate(identity_id):
            e = record.event
            if isinstance(e, ExternalIdLinked) and e.identity_id == identity_id:
                linked.append((e.provider, e.external_id))
            elif isinstance(e, IdentitiesMerged) and e.survivor_id == identity_id:
                for h in e.handles:
                    provider, _, external_id = h.partition(":")
                    linked.append((provider, external_id))
        out = []
        for provider, external_id in dict.fromkeys(linked):
            try:
                entry = await kv.get(handle_key(provider, external_id))
            except KeyNotFoundError:
                continue
            if entry.value and entry.value.decode() == identity_id:
                out.append((provider, external_id))
        return out

    async def merge(
        self, survivor_id: str, merged_id: str, actor: str, reason: str = ""
    ) -> list[str]:
        """``merged_id`` becomes part of ``survivor_id``: its handles resolve to the
        survivor from now on, and the read models show one identity. Returns the handles
        moved."""
        check_text(actor, "actor", MAX_ACTOR)
        check_text(reason, "reason", MAX_REASON)
        if survivor_id == merged_id:
            raise ValidationError("an identity cannot be merged into itself", field="merged_id")
        await self._require(survivor_id, "survivor_id")
        merged_version = await self._require(merged_id, "merged_id")
        for rid, field in ((survivor_id, "survivor_id"), (merged_id, "merged_id")):
            await self._refuse_merged(rid, field)
        handles = await self.handles_of(merged_id)
        names = [handle_name(p, x) for p, x in handles]
        event = IdentitiesMerged(
            survivor_id=survivor_id, merged_id=merged_id, handles=names, actor=actor, reason=reason
        )
        # The merged identity's history ends here (expected version: a concurrent link to
        # it fails the merge instead of being lost); the survivor records it too.
        await self._store.append(
            merged_id, [NewEvent(event, source="jetsource-cli")], merged_version
        )
        await self._store.append(survivor_id, [NewEvent(event, source="jetsource-cli")], ANY)
        kv = await self.kv()
        for provider, external_id in handles:
            key = handle_key(provider, external_id)
            await kv.put(key, survivor_id.encode())
            self._remember(key, survivor_id)
        return names


__all__ = ["IdentityNotFoundError", "IdentityService", "Resolved", "parse_handle_key"]
