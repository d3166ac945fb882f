"""Is a process parked behind a dead letter of a read model? Asked by the reads of one
process, so that a poisoned process is named (DATA_LOSS with the stream sequence of
the poison) instead of answered with the state before it as if nothing followed.

The service reads the read models only (never the event stream): the dead letters
are the projector's record of what a model could not apply, read here with the raw
$JS.API client from the dead-letter stream. The subject and header names are the
engine's (``jetsource.projection.deadletters``, which this package may not import:
it reaches the event store); ``tests/integration/test_poison_every_domain.py`` checks
that they agree.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass

import grpc
from nats.aio.client import Client as NATS

from jetsource.core.grpcserver import RpcError
from jetsource.eventstore import jsapi

log = logging.getLogger("jetsource.process_query")

# jetsource.projection.deadletters: subject token of an aggregate id, and headers.
_SAFE = re.compile(r"[^A-Za-z0-9_\-]")
H_REASON = "Jetsource-Dlq-Reason"
H_SEQ = "Jetsource-Dlq-Original-Seq"


@dataclass(frozen=True)
class Parked:
    model: str
    stream_seq: int
    reason: str


class DeadLetterProbe:
    """The first dead letter of a process in a model version, if any. Best effort:
    NATS away, the dead-letter stream missing or slow read as "none" (the reads need
    Valkey only, and must not wait on NATS)."""

    def __init__(self, nc: NATS, stream: str, subject_prefix: str, timeout_s: float) -> None:
        self._nc = nc
        self._replies = jsapi.Replies(nc)
        self._stream = stream
        self._prefix = subject_prefix
        self._timeout = timeout_s

    def subject(self, model: str, version: int, process_id: str) -> str:
        return f"{self._prefix}.{model}.v{version}.{_SAFE.sub('_', process_id) or '_'}"

    async def first(self, model: str, version: int, process_id: str) -> Parked | None:
        if not self._nc.is_connected:
            return None
        try:
            await self._replies.start()
            raw = await jsapi.direct_get(
                self._replies,
                self._stream,
                {"seq": 1, "next_by_subj": self.subject(model, version, process_id)},
                self._timeout,
            )
        except Exception as exc:
            log.debug("dead letters of %s not read: %r", process_id, exc)
            return None
        if raw is None:
            return None
        seq = 0
        with contextlib.suppress(ValueError):
            seq = int(raw.headers.get(H_SEQ, "0"))
        return Parked(model, seq, raw.headers.get(H_REASON, ""))


def parked_error(process_id: str, parked: Parked) -> RpcError:
    return RpcError(
        grpc.StatusCode.DATA_LOSS,
        f"process {process_id!r} holds a corrupt event at stream sequence "
        f"{parked.stream_seq}: {parked.reason}; the {parked.model} read model shows "
        "nothing past it until an operator voids it "
        f"(jetsource repair void --seq {parked.stream_seq})",
        reason="CORRUPT_EVENT",
        metadata={"process_id": process_id, "stream_sequence": str(parked.stream_seq)},
    )
