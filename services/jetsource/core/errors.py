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
    """An event past the stream's size limit; ``index``: its place among the events of
    the append (None when the server refused it, not the check before)."""

    def __init__(self, message: str, field: str | None = None, index: int | None = None) -> None:
        super().__init__(message, field)
        self.index = index


class UnknownEventTypeError(ValidationError):
    """An event type or message class that is not registered in the codec."""


class InvalidEventTypeError(ValidationError):
    """An event type name the domain's rule refuses (it would not be a safe subject token)."""


class StreamMissingError(JetsourceError):
    """The event stream does not exist: run ensure_streams() (or provisioning)."""


class EventStoreUnavailableError(JetsourceError):
    """NATS did not answer within the retry budget."""


class DeadlineCutError(JetsourceError, TimeoutError):
    """The deadline of the call being served ended a wait (``jetsource.core.deadline``):
    what was awaited did not answer in time, which says nothing of the store's health
    (a slow answer, not a lost one). DEADLINE_EXCEEDED over gRPC, naming what was in
    flight; a TimeoutError, so waits that treat those as transient still do."""


class ConcurrencyError(JetsourceError):
    """The aggregate moved on: its version is not the one the append expected."""

    def __init__(self, aggregate_id: str, expected: object, actual: int) -> None:
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"aggregate {aggregate_id!r} is at version {actual}, append expected {expected}"
        )


class PartlyStoredError(ConcurrencyError):
    """Some of an append's events are stored already, not all of them: the append
    cannot be answered as a duplicate (that would give the ones not stored the
    positions of others) nor made (the stored ones would be doubled). Retrying it as it
    is will not help; a caller that merged several requests' events appends each
    request's on its own. ``stored`` names the event ids found."""

    def __init__(self, aggregate_id: str, stored: list[str], actual: int) -> None:
        super().__init__(aggregate_id, "the same event ids", actual)
        self.stored = stored
        self.args = (
            f"aggregate {aggregate_id!r} holds {len(stored)} of this append's events already "
            f"({', '.join(stored[:3])}{', ...' if len(stored) > 3 else ''}), not all of "
            "them: append the others on their own",
        )


class AccessDeniedError(JetsourceError):
    """A server refused this process's credentials or certificate. Retrying will not
    help: the configuration must change. The message names the server, never a secret."""


class ListenError(JetsourceError):
    """A service cannot listen where it is configured to: the address is in use by
    another process or not this host's. Restarting will not help: the configuration
    (or the other process) must change. The message names ``setting``, the
    environment variable that moves the port, when the caller knows it."""

    def __init__(self, what: str, address: str, reason: str, setting: str | None = None) -> None:
        self.what = what
        self.address = address  # host:port
        self.setting = setting
        move = f"set {setting} to a free port" if setting else "choose another port"
        message = f"{what} cannot listen on {address}: {reason}; {move}"
        message += " (or stop the other process)"
        low, high = ephemeral_ports()
        tail = address.rpartition(":")[2]
        port = int(tail) if tail.isdigit() else 0
        if low <= port <= high:
            message += (
                f". Port {port} lies in this host's ephemeral range {low}-{high}, where the "
                "kernel also picks the local port of outgoing connections, so a conflict "
                "there may hold no listener and come and go"
            )
        super().__init__(message)


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' local ports from (Linux's
    ``ip_local_port_range``); (0, -1), an empty range, where it cannot be read."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split())
    except (OSError, ValueError):
        return 0, -1
    return low, high


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


def exit_code(exc: SystemExit) -> int:
    """The status a program left by ``exc`` exits with, as the shell sees it: ``None``
    is 0, an int itself (modulo 256, as the OS keeps it), anything else (a message) 1.
    The process SDK and the sessions emitter end a block left by ``sys.exit()`` by it."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    return 1
