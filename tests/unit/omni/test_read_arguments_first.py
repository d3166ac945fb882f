"""The omni reads check a read's arguments before they ask anything of a model: a bad
page_size or page_token of GetIdentityTimeline or GetConversation was checked after
the identity was read or the model's active version was looked up, so while that
failed or lagged (the version lookup away, the identity not applied yet) the caller got
UNAVAILABLE, NOT_FOUND or FAILED_PRECONDITION for a request no state makes valid.
Unit: the active-version lookup is a stand-in that fails, and nothing else is reached."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource.core.errors import ValidationError
from jetsource.domains.omni.reads import OmniReads


class LookupAway(Exception):
    """The active version cannot be looked up (NATS KV away)."""


async def _away(model: str) -> int:
    raise LookupAway(model)


async def _no_seq(ns: int) -> int:
    raise AssertionError("not reached")


class NoValkey:
    """Never read: every read below is refused (or stopped by the lookup) before it."""

    def register_script(self, script: str) -> None:
        return None


def reads() -> OmniReads:
    redis: Any = NoValkey()
    raw: Any = None
    return OmniReads(redis, "t", _away, raw, _no_seq, max_page_size=100)


IDENTITY = "idn-0190a1b2c3d4"


@pytest.mark.parametrize(
    ("size", "token", "field"), [(1000, "", "page_size"), (0, "forged", "page_token")]
)
async def test_a_timeline_page_is_checked_before_the_identity_is_read(
    size: int, token: str, field: str
) -> None:
    with pytest.raises(ValidationError) as bad:
        await reads().timeline(IDENTITY, size, token)
    assert bad.value.field == field, bad.value
    with pytest.raises(LookupAway):  # a valid one asks the model (here: away)
        await reads().timeline(IDENTITY, 10, "")


@pytest.mark.parametrize(
    ("size", "token", "field"), [(1000, "", "page_size"), (0, "forged", "page_token")]
)
async def test_a_conversation_page_is_checked_before_the_model_is_asked(
    size: int, token: str, field: str
) -> None:
    with pytest.raises(ValidationError) as bad:
        await reads().conversation("whatsapp", "acme", "c1", size, token)
    assert bad.value.field == field, bad.value
    with pytest.raises(LookupAway):
        await reads().conversation("whatsapp", "acme", "c1", 10, "")


async def test_a_bad_identity_id_is_still_named_first() -> None:
    with pytest.raises(ValidationError) as bad:
        await reads().timeline("not-an-identity", 1000, "forged")
    assert bad.value.field == "identity_id", bad.value
