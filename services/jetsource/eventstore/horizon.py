"""The compaction horizon of an aggregate: how far its history was archived and
purged from the live stream.

A stream whose policy is ``age+compaction`` loses, per aggregate, the events an
archiver sealed into verified archive segments and a snapshot covers. Before it
purges them the archiver records the aggregate's horizon (one NATS KV entry per
aggregate, bucket ``HORIZONS_<stream>``)::

    {"version": 120, "seq": 48211, "time_ns": ..., "segments": ["CONTEXT_EVENTS/..."],
     "latest_ns": ...}

so a reader that meets a history starting after version 1 knows why: versions
1..``version`` (stream sequences up to ``seq``, the last one recorded at ``time_ns``)
are in the named archive segments. ``latest_ns`` is the latest time any of them was
recorded: a stream's stamps may step back, so an archived version may carry a later
time than the last one, and a time before it is answered from the archive
(:meth:`Horizon.covers`). The event store asks for it only when a read needs what
is not in the live stream; a stream that is never compacted never asks.

Readers that are configured with the archive read across the horizon
(:mod:`jetsource.archive.history`); the others get :class:`BeyondHorizonError`,
which names the horizon (gRPC FAILED_PRECONDITION).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from jetsource.core.clock import format_rfc3339_ns
from jetsource.core.errors import JetsourceError
from jetsource.eventstore import jsapi


@dataclass(frozen=True)
class Horizon:
    version: int  # versions 1..version are archived (and purged, or about to be)
    seq: int  # stream sequence of that last archived version
    time_ns: int  # its recorded time
    segments: tuple[str, ...] = field(default=())
    # The latest recorded time of versions 1..version (0: not recorded, a horizon
    # written before it was: taken as time_ns). Recorded as readers read it: a restored
    # message's first time (Jetsource-Recorded-At), where time_ns is the stream's stamp.
    latest_ns: int = 0

    @property
    def recorded_until_ns(self) -> int:
        """Every archived version was recorded at or before this time."""
        return self.latest_ns or self.time_ns

    def covers(self, time_ns: int) -> bool:
        """Whether the state at ``time_ns`` (the story's prefix recorded by then,
        ``recorded_by``) may end before the horizon: some archived version was
        recorded after it, so only the archive can say where the prefix ends."""
        return time_ns < self.recorded_until_ns

    def encode(self) -> bytes:
        body = asdict(self)
        body["segments"] = list(self.segments)
        if not self.latest_ns:
            del body["latest_ns"]
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Horizon:
        body = json.loads(data)
        return cls(
            int(body["version"]),
            int(body["seq"]),
            int(body["time_ns"]),
            tuple(str(s) for s in body.get("segments", ())),
            int(body.get("latest_ns", 0)),
        )


class BeyondHorizonError(JetsourceError):
    """What was asked for lies before the aggregate's compaction horizon, and this
    reader does not read the archive. gRPC answers FAILED_PRECONDITION."""

    def __init__(self, aggregate_id: str, horizon: Horizon) -> None:
        self.aggregate_id = aggregate_id
        self.horizon = horizon
        super().__init__(
            f"aggregate {aggregate_id!r}: versions 1..{horizon.version} (recorded up to "
            f"{format_rfc3339_ns(horizon.recorded_until_ns)}, stream sequence {horizon.seq}) were "
            "compacted into the archive, which this reader is not configured to read "
            "(JETSOURCE_ARCHIVE__URL; `jetsource archive list`)"
        )

    @property
    def details(self) -> dict[str, str]:
        """The refusal's ErrorInfo metadata (FAILED_PRECONDITION ``BEFORE_HORIZON``, the
        query service's and the publisher's). ``horizon_time`` is the horizon's own last
        archived event's time, as it always was; ``recorded_until_time`` (same format) is
        the time the message names, the latest an archived version was recorded
        (``recorded_until_ns``: ``latest_ns``, or the last event's time when the horizon
        has none), so the earliest time answered without the archive: later than
        ``horizon_time`` when stamps stepped back (a881c8e)."""
        return {
            "horizon_version": str(self.horizon.version),
            "horizon_stream_sequence": str(self.horizon.seq),
            "horizon_time": format_rfc3339_ns(self.horizon.time_ns),
            "recorded_until_time": format_rfc3339_ns(self.horizon.recorded_until_ns),
        }


def bucket(stream: str) -> str:
    return f"HORIZONS_{stream}"


def kv_stream(stream: str) -> str:
    return f"KV_{bucket(stream)}"


def kv_subject(stream: str, aggregate_id: str) -> str:
    return f"$KV.{bucket(stream)}.{aggregate_id}"


def bucket_config(stream: str, replicas: int) -> dict[str, object]:
    """A NATS KV bucket (the layout nats clients expect), one value per key, never
    deleted by anyone but an operator."""
    return {
        "name": kv_stream(stream),
        "subjects": [f"$KV.{bucket(stream)}.>"],
        "retention": "limits",
        "storage": "file",
        "discard": "new",
        "max_msgs_per_subject": 1,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "allow_direct": True,
        "num_replicas": replicas,
        "max_age": 0,
    }


async def read(
    replies: jsapi.Replies, stream: str, aggregate_id: str, timeout: float
) -> tuple[Horizon, int] | None:
    """The aggregate's horizon and its KV revision, or None (never compacted, or no
    bucket: the stream was never compacted at all)."""
    try:
        raw = await jsapi.last_for_subject(
            replies, kv_stream(stream), kv_subject(stream, aggregate_id), timeout
        )
    except jsapi.NoRespondersError:
        return None
    except jsapi.JsApiError as exc:
        if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND or exc.code == 404:
            return None
        raise
    if raw is None or not raw.data:
        return None
    return Horizon.decode(raw.data), raw.seq


async def read_all(replies: jsapi.Replies, stream: str, timeout: float) -> dict[str, Horizon]:
    """Every aggregate's horizon (aggregate id -> horizon); empty when the stream was
    never compacted (no bucket). What the archive must hold: every segment a horizon
    names holds purged events no live stream has any more."""
    prefix = kv_subject(stream, "")
    out: dict[str, Horizon] = {}
    seq = 1
    while True:
        try:
            page = await jsapi.direct_get_page(
                replies, kv_stream(stream), None, seq, jsapi.DIRECT_GET_PAGE, timeout
            )
        except jsapi.NoRespondersError:
            return out
        except jsapi.JsApiError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND or exc.code == 404:
                return out
            raise
        for raw in page.messages:
            if raw.data and raw.subject.startswith(prefix):
                out[raw.subject[len(prefix) :]] = Horizon.decode(raw.data)
        if page.pending == 0 or not page.messages:
            return out
        seq = page.messages[-1].seq + 1
