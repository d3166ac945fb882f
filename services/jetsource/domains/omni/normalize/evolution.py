"""Normalizer for the evolution wire format (being built: raises Unrecognised until it is)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.domains.omni.normalize.common import Context
from jetsource.domains.omni.normalize.errors import Unrecognised

FORMAT = "evolution"


def matches(body: Mapping[str, Any]) -> bool:
    return isinstance(body.get("event"), str) and "data" in body


def normalize(ctx: Context, body: Mapping[str, Any]) -> list[NormalizedEvent]:
    raise Unrecognised(f"{FORMAT} normalizer not built yet")
