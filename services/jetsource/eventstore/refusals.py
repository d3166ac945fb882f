"""JetStream refusing a write, named: what the server said, and what to do about it.

A JetStream API error carries a numeric ``err_code`` (nats-server's errors.json); a few
of them mean the server is up and answering but will not store anything: the disk or
a storage limit is full, JetStream is disabled, the stream is sealed. Those are not
the caller's fault and retrying at once does not help, but they are not a lost
connection either: the error says which one it is, in words an operator acts on.

Measured on nats-server 2.15.1:

- ``max_file_store`` (server limit) reached: 503 / 10023 "insufficient resources";
  writes are accepted again as soon as space is freed inside JetStream (a stream
  deleted or purged), no restart needed. A config reload cannot raise
  ``max_file_store`` ("config reload not supported for jetstream max memory and max
  store"): raising it takes a restart.
- account ``max_file`` reached: 400 / 10002 "resource limits exceeded for account".
- stream ``max_bytes`` reached with discard new: 503 / 10077 "maximum bytes exceeded".
- sealed stream: 400 / 10109 "invalid operation on sealed stream".
- a real full disk: the write gets *no answer* (the client times out), the server logs
  "Critical write error ... no space left on device" and its ``/healthz`` reports the
  stream's write error; it keeps refusing that stream even after space is freed and a
  config reload, until nats-server is restarted (nothing stored is lost). The client
  sees timeouts (``EventStoreUnavailableError``), not an err_code; ``jetsource infra
  status`` names the condition and ``jetsource infra up`` restarts a local server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors

from jetsource.core.errors import EventStoreUnavailableError, StreamMissingError
from jetsource.eventstore import jsapi


@dataclass(frozen=True)
class Refusal:
    """One kind of refusal: a short name, what it means, and the way out."""

    name: str
    meaning: str
    remedy: str


# err_code -> refusal. Codes from nats-server's server/errors.json.
REFUSALS: dict[int, Refusal] = {
    10023: Refusal(
        "insufficient_resources",
        "insufficient storage: the server's JetStream storage limit (max_file_store) "
        "or its disk is full",
        "free space (purge or delete other streams, or grow the disk / limit and "
        "restart nats-server)",
    ),
    10047: Refusal(
        "insufficient_storage",
        "insufficient storage resources available",
        "free space on the JetStream store, or raise max_file_store and restart nats-server",
    ),
    10028: Refusal(
        "insufficient_memory",
        "insufficient memory resources available",
        "raise max_memory_store or free memory streams",
    ),
    10002: Refusal(
        "account_limits",
        "the account's JetStream limits are reached (storage, streams or consumers)",
        "free space in the account or raise its jetstream limits",
    ),
    10077: Refusal(
        "stream_store_failed",
        "the stream could not store the message",
        "see the description: a stream max_bytes/max_msgs limit with discard new, or a "
        "storage failure",
    ),
    10076: Refusal(
        "jetstream_disabled",
        "JetStream is not enabled on the server (a server disables it after running "
        "out of resources)",
        "free space, then restart nats-server or reload its config",
    ),
    10039: Refusal(
        "jetstream_disabled_for_account",
        "JetStream is not enabled for this account",
        "enable jetstream for the account in the server config",
    ),
    10109: Refusal(
        "stream_sealed",
        "the stream is sealed: it accepts no writes, deletes or purges",
        "a sealed stream cannot be unsealed; restore the events into a new stream",
    ),
    10008: Refusal(
        "jetstream_unavailable",
        "JetStream is temporarily unavailable (no meta leader)",
        "wait for the cluster to elect a leader; check the NATS cluster",
    ),
}


class JetStreamRefusedError(EventStoreUnavailableError):
    """NATS answered but JetStream refused to store the write; nothing was stored.

    An ``EventStoreUnavailableError``, so every caller that already treats the store
    as unavailable (gRPC UNAVAILABLE, retry later with the same ids) keeps doing so;
    ``refusal`` says which condition it is."""

    def __init__(self, refusal: Refusal, err_code: int, description: str, stream: str) -> None:
        self.refusal = refusal
        self.err_code = err_code
        self.description = description
        self.stream = stream
        said = f"{description} " if description else ""
        # No stream: a JetStream API error that named none (an admin command's request).
        target = f"the write to stream {stream}" if stream else "a write"
        super().__init__(
            f"NATS JetStream refused {target}: {refusal.meaning} "
            f"({said}err_code {err_code}); nothing was stored. To recover: {refusal.remedy}"
        )


def classify(err_code: int) -> Refusal | None:
    """The refusal an err_code stands for (None: not a refusal of the server's own)."""
    return REFUSALS.get(err_code)


def refused(err_code: int, description: str, stream: str) -> JetStreamRefusedError | None:
    """The named error for a JetStream API error, or None when the code is not a
    server-side refusal (a wrong expected sequence, a message too large, ...)."""
    refusal = classify(err_code)
    return (
        None if refusal is None else JetStreamRefusedError(refusal, err_code, description, stream)
    )


def refused_from(exc: BaseException, stream: str) -> JetStreamRefusedError | None:
    """As :func:`refused`, from a ``jsapi.JsApiError`` (or anything with ``err_code``
    and ``description``); None for other exceptions."""
    err_code = getattr(exc, "err_code", None)
    if not isinstance(err_code, int):
        return None
    return refused(err_code, str(getattr(exc, "description", "")), stream)


@contextlib.contextmanager
def writes_to(stream: str, missing: str = "") -> Iterator[None]:
    """Name what JetStream said to a write to ``stream`` (an event stream, a KV bucket's
    ``KV_<bucket>``, an archive) in the caller's terms: no stream there (no responders,
    or err_code 10059) is ``StreamMissingError`` naming it (``missing`` adds what to do);
    a refusal of the server's own (full, sealed, disabled: :data:`REFUSALS`) is
    :class:`JetStreamRefusedError`. Both are answered UNAVAILABLE / 503 by the services
    (retry later, the same ids). Other API errors pass through for the caller to judge
    (a wrong last sequence is a lost compare-and-set, not a fault). jsapi's errors and
    nats-py's (its ``kv`` calls) alike."""
    try:
        yield
    except (jsapi.NoRespondersError, nats.errors.NoRespondersError):
        raise StreamMissingError(
            f"stream {stream} does not exist" + (f": {missing}" if missing else "")
        ) from None
    except (jsapi.JsApiError, nats.js.errors.APIError) as exc:
        if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
            raise StreamMissingError(
                f"stream {stream} not found" + (f": {missing}" if missing else "")
            ) from exc
        if (named := refused_from(exc, stream)) is not None:
            raise named from exc
        raise
