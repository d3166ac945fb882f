"""The raw payload archive: one JetStream stream (``OMNI_RAW``), one message per request
on ``omni.raw.<id>``, written before anything is normalized from it and read back by id
(``jetsource omni raw show ID``, ``GetEvent`` with ``include_raw``)."""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, ConnectionReconnectingError, OutboundBufferLimitError

from jetsource._gen.omni.v1.raw_pb2 import RawPayload
from jetsource.core.errors import EventStoreUnavailableError, JetsourceError, ValidationError
from jetsource.core.ids import validate_aggregate_id
from jetsource.core.printable import ID_TAKES, not_id_at, refused_at
from jetsource.core.wellknown import unshowable
from jetsource.domains.omni.settings import OmniOptions
from jetsource.eventstore import jsapi, refusals
from jetsource.eventstore.jsapi import OutMessage

_TRANSIENT = (
    TimeoutError,
    ConnectionClosedError,
    ConnectionReconnectingError,
    OutboundBufferLimitError,
)


def raw_stream_config(o: OmniOptions) -> dict[str, Any]:
    """Like an event store: nothing is rewritten or silently dropped; a retention age
    only when one is set (0: keep everything). Deleting and purging through the API
    are denied whatever the age: the age expires records without a purge, and
    JetStream never lets a stream take a denial back, so a purge denied only while
    the age was 0 made setting ``raw_max_age_s`` on an archive created without it
    stop the ingress at start ("stream configuration update can not cancel deny
    purge", with a traceback)."""
    max_age = int(o.raw_max_age_s * 1_000_000_000)
    return {
        "name": o.raw_stream,
        "subjects": [f"{o.raw_subject_prefix}.>"],
        "retention": "limits",
        "storage": "file",
        "discard": "new",
        "deny_delete": True,
        "deny_purge": True,
        "compression": "s2",
        "allow_direct": True,
        # JetStream takes no duplicate window longer than the age (an age under 120 s
        # stopped the ingress at start: "duplicates window can not be larger then max
        # age"); a record's retry comes within milliseconds.
        "duplicate_window": min(120 * 1_000_000_000, max_age or 120 * 1_000_000_000),
        "num_replicas": o.raw_replicas,
        "max_msg_size": o.raw_max_msg_size,
        "max_age": max_age,
        "max_msgs": -1,
        "max_bytes": -1,
    }


class RawRecordCorruptError(JetsourceError):
    """A record of the raw archive no reader takes (published there raw: bytes that do
    not parse, a time no Timestamp holds). Reads of it answered 500 "internal error" /
    INTERNAL (a DecodeError, JSON's "Timestamp is not valid"); they name it now: REST
    500 ``data_loss``, gRPC DATA_LOSS."""

    def __init__(self, raw_id: str, stream_seq: int, reason: str) -> None:
        self.raw_id = raw_id
        self.stream_seq = stream_seq
        super().__init__(
            f"raw payload {raw_id!r} (stream sequence {stream_seq} of the raw archive) is "
            f"no record this service reads: {reason}"
        )


class RawArchive:
    def __init__(
        self,
        nc: NATS,
        options: OmniOptions,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.05,
    ) -> None:
        self._o = options
        self._replies = jsapi.Replies(nc)
        self._timeout = timeout_s
        self._attempts = attempts
        self._backoff = backoff_s
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._replies.start()
            self._started = True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._replies.stop()

    async def ensure_stream(self) -> dict[str, Any]:
        await self.start()
        return await jsapi.ensure_stream(self._replies, raw_stream_config(self._o), self._timeout)

    def subject(self, raw_id: str) -> str:
        return f"{self._o.raw_subject_prefix}.{raw_id}"

    async def _call(self, fn: Any) -> Any:
        for attempt in range(self._attempts):
            try:
                # Missing, full or sealed: named (503), not a 500 (refusals.writes_to).
                with refusals.writes_to(self._o.raw_stream):
                    return await fn()
            except _TRANSIENT as exc:
                if attempt == self._attempts - 1:
                    raise EventStoreUnavailableError(
                        f"NATS did not store the raw payload after {self._attempts} attempts: "
                        f"{exc!r}"
                    ) from exc
                await asyncio.sleep(self._backoff * (2**attempt))
        raise AssertionError("unreachable")

    async def put(self, record: RawPayload, revision: int = 0) -> int:
        """Store one record (its id and ``revision`` are the message id: a retried put
        stores it once); returns its stream sequence. A later revision of a record (the
        verdict of a request that failed after it was archived) is read in its place."""
        await self.start()
        msg_id = f"raw-{record.id}" + (f"-r{revision}" if revision else "")
        message = OutMessage(
            self.subject(record.id),
            record.SerializeToString(deterministic=True),
            {"Nats-Msg-Id": msg_id},
        )

        async def publish() -> int:
            ack = await jsapi.publish(self._replies, message, self._timeout)
            return ack.seq

        seq: int = await self._call(publish)
        return seq

    async def get(self, raw_id: str) -> RawPayload | None:
        at = not_id_at(raw_id)
        if at is not None:  # said as every read's id says it (omni.reads.read_text)
            raise ValidationError(
                f"raw_id holds {refused_at(raw_id, at)}: it takes {ID_TAKES}", field="raw_id"
            )
        try:
            validate_aggregate_id(raw_id, "raw_id")
        except ValidationError:
            raise ValidationError(
                f"raw id {raw_id[:80]!r} is not an id (letters, digits, '-' and '_')",
                field="raw_id",
            ) from None
        await self.start()
        raw = await self._call(
            lambda: jsapi.last_for_subject(
                self._replies, self._o.raw_stream, self.subject(raw_id), self._timeout
            )
        )
        if raw is None:
            return None
        record = RawPayload()
        try:
            record.ParseFromString(raw.data)
        except DecodeError as exc:
            raise RawRecordCorruptError(raw_id, raw.seq, f"it does not parse ({exc})") from None
        problem = unshowable(record, raw.data)
        if problem:
            raise RawRecordCorruptError(raw_id, raw.seq, problem)
        return record

    async def info(self) -> dict[str, Any]:
        await self.start()
        result: dict[str, Any] = await self._call(
            lambda: jsapi.api(self._replies, f"STREAM.INFO.{self._o.raw_stream}", {}, self._timeout)
        )
        return result
