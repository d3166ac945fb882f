"""The two ways a webhook body can fail to normalize."""

from __future__ import annotations


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
