"""The two ways a webhook body can fail to normalize."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# How much of the body a reason repeats: a value's first characters, a list's first
# items. The answer holds the reason (200 "unrecognised", 422), so a reason naming every
# value a body of 4 MiB holds was as large (190,000 protocol kinds: an answer of 1.8 MB).
SHOWN_CHARS = 80
SHOWN_ITEMS = 10


def quoted(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``value`` as a reason names it (repr: a string quoted), its first ``limit``
    characters when longer, saying how long it was: ``'MESSAGES_...'... (5000
    characters)``."""
    if isinstance(value, str):
        return (
            repr(value)
            if len(value) <= limit
            else f"{value[:limit]!r}... ({len(value)} characters)"
        )
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def listed(items: Iterable[str], limit: int = SHOWN_ITEMS) -> str:
    """``items`` joined with ", ", the first ``limit`` of them and "and N more" when there
    are more."""
    every = list(items)
    head = ", ".join(every[:limit])
    return head if len(every) <= limit else f"{head} and {len(every) - limit} more"


class Unrecognised(ValueError):
    """The payload's shape or event kind is not one this normalizer understands.

    Providers retry a non-2xx answer, so the ingress archives such a body as
    "unrecognised" and answers 200: nothing is lost and nothing retries forever.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Malformed(ValueError):
    """The provider and event kind are understood, but a field it needs is missing or of the
    wrong type. ``field`` is the path of that field in the body, e.g.
    ``entry[0].changes[0].value.messages[0].from``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
