"""Normalizer for the whatsapp_cloud wire format (being built: raises Unrecognised until it is)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.domains.omni.normalize.common import Context
from jetsource.domains.omni.normalize.errors import Unrecognised

FORMAT = "whatsapp_cloud"


def matches(body: Mapping[str, Any]) -> bool:
    return body.get("object") == "whatsapp_business_account"


def normalize(ctx: Context, body: Mapping[str, Any]) -> list[NormalizedEvent]:
    raise Unrecognised(f"{FORMAT} normalizer not built yet")
