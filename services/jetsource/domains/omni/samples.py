"""Generated histories of one aggregate, for the engine's generic tests (determinism of
every model): a normalized event and its processing attempts, or (odd seeds) an
identity with handles linked, re-linked and a merge."""

from __future__ import annotations

from google.protobuf.message import Message

from jetsource._gen.omni.v1.events_pb2 import (
    CONTENT_TYPE_TEXT,
    DIRECTION_INBOUND,
    EVENT_TYPE_MESSAGE,
    NormalizedEvent,
)
from jetsource._gen.omni.v1.lifecycle_pb2 import (
    ExternalIdLinked,
    IdentitiesMerged,
    IdentityCreated,
    ProcessingCompleted,
    ProcessingFailed,
    ProcessingStarted,
)


def sample_history(aggregate_id: str, n: int, seed: int = 0) -> list[Message]:
    if seed % 2:
        return _identity(aggregate_id, n, seed)
    out: list[Message] = [
        NormalizedEvent(
            id=aggregate_id,
            provider="whatsapp" if seed % 4 == 0 else "discord",
            provider_event_id=f"pe-{aggregate_id}",
            event_type=EVENT_TYPE_MESSAGE,
            direction=DIRECTION_INBOUND,
            sender_identity_id=f"idn-s{seed % 3}",
            recipient_identity_id="idn-bot",
            sender_handle=f"+4917{seed:05d}",
            instance_name=f"inst{seed % 2}",
            conversation_id=f"conv{seed % 3}",
            content_type=CONTENT_TYPE_TEXT,
            content_text=f"hello [{aggregate_id}] {seed}",
            raw_ref=f"raw-{aggregate_id}",
        )
    ]
    attempt = 0
    for i in range(1, n):
        if i % 3 == 1:
            attempt += 1
            out.append(ProcessingStarted(worker=f"w{seed % 2}", attempt=attempt))
        elif i % 3 == 2 and i < n - 1:
            out.append(
                ProcessingFailed(worker="w", attempt=attempt, reason=f"boom {i}", will_retry=True)
            )
        else:
            out.append(ProcessingCompleted(worker="w", attempt=attempt, outcome="ok"))
    return out


def _identity(aggregate_id: str, n: int, seed: int) -> list[Message]:
    out: list[Message] = [IdentityCreated(identity_id=aggregate_id, display_name=f"P{seed}")]
    for i in range(1, n):
        if i == n - 1 and n > 2:
            out.append(
                IdentitiesMerged(
                    survivor_id=aggregate_id,
                    merged_id=f"{aggregate_id}-old",
                    handles=[f"discord:{seed}{i}"],
                    actor="test",
                )
            )
        else:
            out.append(
                ExternalIdLinked(
                    identity_id=aggregate_id,
                    provider="whatsapp" if i % 2 else "discord",
                    external_id=f"{seed}{i}",
                    instance="inst",
                    previous_identity_id=f"idn-other{i % 3}" if i % 4 == 3 else "",
                    linked_by="test",
                )
            )
    return out
