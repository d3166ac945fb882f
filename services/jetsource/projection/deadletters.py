"""Dead letters: events a read model could not apply, kept with the reason.

Stream ``CONTEXT_DLQ``, one subject per model version and aggregate
(``jetsource.dlq.<model>.v<version>.<aggregate_id>``). Each entry holds the original
message bytes and headers naming the reason, the original stream sequence and
subject, and how many times it was tried. Publishing is idempotent (``Nats-Msg-Id``
= model, version and original sequence), so a crash between dead-lettering and the
ack never files an event twice. Entries are deleted once retried or discarded.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from jetsource.core.clock import format_rfc3339_ns, now_ns, parse_rfc3339_ns
from jetsource.core.errors import InvalidAggregateIdError
from jetsource.core.ids import validate_aggregate_id
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import stored_event_id
from jetsource.eventstore.jsapi import OutMessage, RawMessage, Replies
from jetsource.projection.contract import ModelSpec

H_REASON = "Jetsource-Dlq-Reason"
H_SEQ = "Jetsource-Dlq-Original-Seq"
H_SUBJECT = "Jetsource-Dlq-Original-Subject"
H_EVENT_ID = "Jetsource-Dlq-Event-Id"
H_TRIES = "Jetsource-Dlq-Tries"
H_TIME = "Jetsource-Dlq-Time"
_SAFE = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass(frozen=True)
class DeadLetter:
    dlq_seq: int
    model: str
    version: int
    aggregate_id: str
    original_seq: int
    original_subject: str
    event_id: str
    reason: str
    tries: int
    time_ns: int
    data: bytes

    def summary(self) -> dict[str, Any]:
        return {
            "dlq_seq": self.dlq_seq,
            "model": f"{self.model} v{self.version}",
            "aggregate_id": self.aggregate_id,
            "original_seq": self.original_seq,
            "subject": self.original_subject,
            "event_id": self.event_id,
            "reason": self.reason,
            "tries": self.tries,
            "time": format_rfc3339_ns(self.time_ns),
            "bytes": len(self.data),
        }


NO_STORY = "_"  # what a subject naming no aggregate a writer takes is read as


def aggregate_of(subject: str, prefix: str) -> str:
    """The aggregate id a subject names (``<prefix>.<id>.<type>``), or ``_`` (never an
    aggregate id) when it names none a writer takes: ``a%b`` is not read as the story
    ``a_b`` its dead letters' token would name, which they would park."""
    rest = subject[len(prefix) + 1 :] if subject.startswith(prefix + ".") else ""
    parts = rest.split(".")
    if len(parts) != 2:
        return NO_STORY
    try:
        return validate_aggregate_id(parts[0])
    except InvalidAggregateIdError:
        return NO_STORY


def parked_story(letter: DeadLetter, prefix: str) -> str:
    """The story a dead letter parks: the one its event's subject names (``_`` for a
    subject naming none, whose letter may lie under a real story's token, as filed
    before 'a%b' was read as none), else the one its subject's token names."""
    if letter.original_subject.startswith(prefix + "."):
        return aggregate_of(letter.original_subject, prefix)
    return letter.aggregate_id


def _token(aggregate_id: str) -> str:
    """The subject token of an aggregate's dead letters (``>``: all of them)."""
    return aggregate_id if aggregate_id == ">" else (_SAFE.sub("_", aggregate_id) or "_")


class DeadLetters:
    def __init__(
        self, nc: NATS, replies: Replies, stream: str, subject_prefix: str, timeout: float
    ) -> None:
        self._nc = nc
        self._replies = replies
        self.stream = stream
        self.prefix = subject_prefix
        self._timeout = timeout

    async def ensure_stream(self, replicas: int = 1) -> None:
        await self._replies.start()
        config = {
            "name": self.stream,
            "subjects": [f"{self.prefix}.>"],
            "retention": "limits",
            "storage": "file",
            "discard": "new",
            "allow_direct": True,
            "duplicate_window": 120_000_000_000,
            "num_replicas": replicas,
            "max_msgs": -1,
            "max_age": 0,
        }
        await jsapi.ensure_stream(self._replies, config, self._timeout)

    def subject(self, spec: ModelSpec, aggregate_id: str = ">") -> str:
        """The model version's dead letters of one aggregate (``>``: all of them)."""
        return f"{self.prefix}.{spec.name}.v{spec.version}.{_token(aggregate_id)}"

    async def publish(
        self,
        spec: ModelSpec,
        aggregate_id: str,
        original: RawMessage,
        reason: str,
        tries: int,
    ) -> None:
        headers = {
            "Nats-Msg-Id": f"{spec.name}-v{spec.version}-{original.seq}",
            H_REASON: reason.replace("\r", " ").replace("\n", " ")[:1000],
            H_SEQ: str(original.seq),
            H_SUBJECT: original.subject,
            H_EVENT_ID: stored_event_id(original.headers.get("Nats-Msg-Id", ""), aggregate_id),
            H_TRIES: str(tries),
            H_TIME: format_rfc3339_ns(now_ns()),
        }
        await jsapi.publish_stored(
            self._replies,
            self.stream,
            OutMessage(self.subject(spec, aggregate_id), original.data, headers),
            self._timeout,
        )

    def _parse(self, raw: RawMessage) -> DeadLetter:
        h: Mapping[str, str] = raw.headers
        model, version, aggregate_id = raw.subject[len(self.prefix) + 1 :].split(".", 2)
        return DeadLetter(
            dlq_seq=raw.seq,
            model=model,
            version=int(version.lstrip("v")),
            aggregate_id=aggregate_id,
            original_seq=int(h.get(H_SEQ, "0")),
            original_subject=h.get(H_SUBJECT, ""),
            event_id=h.get(H_EVENT_ID, ""),
            reason=h.get(H_REASON, ""),
            tries=int(h.get(H_TRIES, "0")),
            time_ns=parse_rfc3339_ns(h[H_TIME]) if H_TIME in h else raw.time_ns,
            data=raw.data,
        )

    async def list(
        self, spec: ModelSpec | None = None, aggregate_id: str = ">"
    ) -> list[DeadLetter]:
        subject = self.subject(spec, aggregate_id) if spec else f"{self.prefix}.>"
        return await self._list(subject)

    async def of_aggregate(self, model: str, aggregate_id: str) -> builtins.list[DeadLetter]:
        """Every version's dead letters of one aggregate of ``model`` (its subjects
        alone: not every letter of the stream read to find them)."""
        return await self._list(f"{self.prefix}.{model}.*.{_token(aggregate_id)}")

    async def _list(self, subject: str) -> builtins.list[DeadLetter]:
        await self._replies.start()
        out = []
        try:
            async for raw in jsapi.direct_get_batch(
                self._replies, self.stream, subject, 1, self._timeout
            ):
                out.append(self._parse(raw))
        except jsapi.NoRespondersError:
            return []
        return out

    async def get(self, dlq_seq: int) -> DeadLetter | None:
        await self._replies.start()
        raw = await jsapi.direct_get(self._replies, self.stream, {"seq": dlq_seq}, self._timeout)
        if raw is None or not raw.subject.startswith(self.prefix + "."):
            return None
        return self._parse(raw)

    async def filed(self, spec: ModelSpec, aggregate_id: str, seq: int) -> bool:
        """Is stream sequence ``seq`` of this aggregate filed in this model version?"""
        return any(d.original_seq == seq for d in await self.list(spec, aggregate_id))

    async def pending(self, spec: ModelSpec, aggregate_id: str) -> bool:
        """Does this aggregate still have dead letters in this model version?"""
        raw = await jsapi.last_for_subject(
            self._replies, self.stream, self.subject(spec, aggregate_id), self._timeout
        )
        return raw is not None

    async def delete(self, dlq_seq: int) -> bool:
        return await jsapi.delete_message(self._replies, self.stream, dlq_seq, self._timeout)

    async def clear(self, spec: ModelSpec) -> int:
        """Delete every dead letter of one model version (its data is being emptied:
        a letter left behind would park its story in the next build of the version,
        from its first event). Returns how many were deleted."""
        removed = 0
        for letter in await self.list(spec):
            removed += bool(await self.delete(letter.dlq_seq))
        return removed

    async def count(self, spec: ModelSpec) -> int:
        return sum((await self.subjects(spec)).values())

    async def subjects(self, spec: ModelSpec, timeout: float | None = None) -> dict[str, int]:
        """The model version's dead-letter subjects (one per aggregate parked) and
        how many each holds, in one request."""
        await self._replies.start()
        info = await jsapi.api(
            self._replies,
            f"STREAM.INFO.{self.stream}",
            {"subjects_filter": self.subject(spec)},
            self._timeout if timeout is None else timeout,
        )
        return {k: int(n) for k, n in (info["state"].get("subjects") or {}).items()}
