"""Typed errors. Each says what is wrong in words a caller can act on."""

from __future__ import annotations


class JetsourceError(Exception):
    """Base of every jetsource error."""


class ValidationError(JetsourceError, ValueError):
    """Bad input: nothing was changed. ``field`` names the offending input, if known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidAggregateIdError(ValidationError):
    pass


class EventTooLargeError(ValidationError):
    pass


class UnknownEventTypeError(ValidationError):
    """An event type or message class that is not registered in the codec."""


class InvalidEventTypeError(ValidationError):
    """An event type name the domain's rule refuses (it would not be a safe subject token)."""


class StreamMissingError(JetsourceError):
    """The event stream does not exist: run ensure_streams() (or provisioning)."""


class EventStoreUnavailableError(JetsourceError):
    """NATS did not answer within the retry budget."""


class ConcurrencyError(JetsourceError):
    """The aggregate moved on: its version is not the one the append expected."""

    def __init__(self, aggregate_id: str, expected: object, actual: int) -> None:
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"aggregate {aggregate_id!r} is at version {actual}, append expected {expected}"
        )


class AccessDeniedError(JetsourceError):
    """A server refused this process's credentials or certificate. Retrying will not
    help: the configuration must change. The message names the server, never a secret."""


class ListenError(JetsourceError):
    """A service cannot listen where it is configured to: the address is in use by
    another process or not this host's. Restarting will not help: the configuration
    (or the other process) must change."""


class CorruptEventError(JetsourceError):
    """A stored message of an aggregate is not a valid event at its place in the
    aggregate's history: it does not decode, its envelope is empty or names another
    aggregate, its version breaks the contiguous chain, or the domain refuses it.
    Nothing can be read or decided past it until an operator voids that stream
    sequence (``jetsource repair void``). gRPC answers DATA_LOSS naming the sequence."""

    def __init__(self, aggregate_id: str, stream_seq: int, reason: str) -> None:
        self.aggregate_id = aggregate_id
        self.stream_seq = stream_seq
        self.reason = reason
        super().__init__(
            f"aggregate {aggregate_id!r} holds a corrupt event at stream sequence "
            f"{stream_seq}: {reason}; nothing past it can be read until an operator "
            f"voids it (jetsource repair void --seq {stream_seq})"
        )
