"""Provider normalizers: a webhook body in, provider-neutral ``NormalizedEvent`` s out.

Pure functions, one module per wire format (``whatsapp_cloud``, ``evolution``, ``discord``,
``discord_interactions``);
no I/O, no clock: ``received_at`` and ``raw_ref`` come from the caller. Identity ids are left
empty (the ingress resolves handles to identities). An event's ``id`` is a UUIDv5 of
(provider, instance, provider_event_id), so a re-delivered webhook yields the same ids.

A body either normalizes as a whole or raises: ``Unrecognised`` (shape or event kind not
understood) or ``Malformed`` (a required field missing or of the wrong type, named by path);
never a partial list.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.domains.omni.normalize import (
    discord,
    discord_interactions,
    evolution,
    whatsapp_cloud,
)
from jetsource.domains.omni.normalize.common import Context, event_id
from jetsource.domains.omni.normalize.errors import Malformed, Unrecognised

PROVIDERS = ("whatsapp", "discord")


def detect_format(provider: str, body: Mapping[str, Any]) -> str:
    """The wire format of ``body``: ``whatsapp_cloud``, ``evolution`` or ``discord_gateway``."""
    if not isinstance(body, Mapping):
        raise Unrecognised(f"body is a JSON {type(body).__name__}, not an object")
    if provider == "whatsapp":
        if whatsapp_cloud.matches(body):
            return whatsapp_cloud.FORMAT
        if evolution.matches(body):
            return evolution.FORMAT
        raise Unrecognised(
            "neither a WhatsApp Cloud API webhook (object: whatsapp_business_account) "
            "nor an Evolution API webhook (event: messages.upsert, ...)"
        )
    if provider == "discord":
        if discord.matches(body):
            return discord.FORMAT
        raise Unrecognised('not a Discord gateway dispatch ({"t": ..., "d": {...}})')
    raise Unrecognised(f"unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")


def normalize(
    provider: str,
    instance: str,
    body: Mapping[str, Any],
    received_at: datetime,
    raw_ref: str,
    instance_format: str = "",
) -> list[NormalizedEvent]:
    """Normalize one webhook body received on ``/webhooks/{provider}/{instance}``.

    ``instance_format`` is the instance's configured format where it decides the wire
    format (``interactions``: Discord's HTTP interactions, which no body shape tells from
    a forwarded dispatch); otherwise the format is detected from the body."""
    ctx = Context(provider=provider, instance=instance, received_at=received_at, raw_ref=raw_ref)
    if provider == "discord" and instance_format == "interactions":
        if not isinstance(body, Mapping):
            raise Unrecognised(f"body is a JSON {type(body).__name__}, not an object")
        return discord_interactions.normalize(ctx, body)
    fmt = detect_format(provider, body)
    if fmt == whatsapp_cloud.FORMAT:
        return whatsapp_cloud.normalize(ctx, body)
    if fmt == evolution.FORMAT:
        return evolution.normalize(ctx, body)
    return discord.normalize(ctx, body)


__all__ = [
    "PROVIDERS",
    "Malformed",
    "NormalizedEvent",
    "Unrecognised",
    "detect_format",
    "event_id",
    "normalize",
]
