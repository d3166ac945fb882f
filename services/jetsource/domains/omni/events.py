"""The omni domain's events, their registry, and the ids derived from what providers send.

Two kinds of aggregate share the ``OMNI_EVENTS`` stream, told apart by their ids:

- a normalized event (id from the normalizer, deterministic from provider, instance and
  provider event id): ``EventReceived`` (the NormalizedEvent) at version 1, then its
  processing status (``ProcessingStarted``/``Completed``/``Failed``);
- an identity (``idn-...``): ``IdentityCreated``, ``ExternalIdLinked``,
  ``IdentitiesMerged``.

An event's aggregate subject is ``omni.events.<id>.>``, so "stored once" is the
stream's own check: the first append expects the subject to be empty (expected last
subject sequence 0), for ever, not only within the duplicate window.
"""

from __future__ import annotations

import base64
import hashlib
import uuid

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource._gen.omni.v1.lifecycle_pb2 import (
    ExternalIdLinked,
    IdentitiesMerged,
    IdentityCreated,
    ProcessingCompleted,
    ProcessingFailed,
    ProcessingStarted,
)
from jetsource.core.codec import EventRegistry

AGGREGATE_TYPE = "omni"
STREAM = "OMNI_EVENTS"
SUBJECT_PREFIX = "omni.events"

EVENT_RECEIVED = "EventReceived"
PROCESSING_STARTED = "ProcessingStarted"
PROCESSING_COMPLETED = "ProcessingCompleted"
PROCESSING_FAILED = "ProcessingFailed"
IDENTITY_CREATED = "IdentityCreated"
EXTERNAL_ID_LINKED = "ExternalIdLinked"
IDENTITIES_MERGED = "IdentitiesMerged"

EVENT_TYPES = frozenset(
    {EVENT_RECEIVED, PROCESSING_STARTED, PROCESSING_COMPLETED, PROCESSING_FAILED}
)
IDENTITY_TYPES = frozenset({IDENTITY_CREATED, EXTERNAL_ID_LINKED, IDENTITIES_MERGED})

registry = EventRegistry()
registry.register(EVENT_RECEIVED, 1, NormalizedEvent)
registry.register(PROCESSING_STARTED, 1, ProcessingStarted)
registry.register(PROCESSING_COMPLETED, 1, ProcessingCompleted)
registry.register(PROCESSING_FAILED, 1, ProcessingFailed)
registry.register(IDENTITY_CREATED, 1, IdentityCreated)
registry.register(EXTERNAL_ID_LINKED, 1, ExternalIdLinked)
registry.register(IDENTITIES_MERGED, 1, IdentitiesMerged)
registry.validate()

IDENTITY_PREFIX = "idn-"
_NAMESPACE = uuid.UUID("6f6d6e69-0000-4000-8000-6a6574736f75")  # "omni" ... "jetsou"


def stable_uuid(*parts: str) -> str:
    """A UUID (v5) from parts: the same event written again carries the same event id
    (``Nats-Msg-Id``), so a retry is recognised as the same append."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def first_contact_identity(provider: str, external_id: str) -> str:
    """The identity a handle gets when it is met for the first time: derived from the
    handle, so two ingress processes meeting it at once write the same identity."""
    digest = hashlib.sha256(f"{provider}\x1f{external_id}".encode()).hexdigest()
    return f"{IDENTITY_PREFIX}{digest[:26]}"


def handle_key(provider: str, external_id: str) -> str:
    """The KV key of a handle: provider, then the external id in URL-safe base64 (KV
    keys allow letters, digits, '-', '_', '=' and '.', and ids carry '@', '+', ...)."""
    encoded = base64.urlsafe_b64encode(external_id.encode()).decode().rstrip("=")
    return f"{provider}.{encoded}"


def parse_handle_key(key: str) -> tuple[str, str]:
    provider, _, encoded = key.partition(".")
    padded = encoded + "=" * (-len(encoded) % 4)
    return provider, base64.urlsafe_b64decode(padded).decode()


def handle_name(provider: str, external_id: str) -> str:
    """How a handle is written for people and in IdentitiesMerged: ``provider:id``."""
    return f"{provider}:{external_id}"


def is_identity(aggregate_id: str) -> bool:
    return aggregate_id.startswith(IDENTITY_PREFIX)
