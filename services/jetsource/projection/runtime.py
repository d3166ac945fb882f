"""The consumer runtime: one worker per (read model, model version).

A worker pulls from its durable consumer, decodes and upcasts, hands the batch to
the model (which writes effects and checkpoint atomically), then acks what is done.
Events waiting behind an earlier one of their aggregate are redelivered shortly;
events the handler refuses (or that do not decode) are retried with backoff and,
after ``max_deliver`` refusals, filed as dead letters. From then on the aggregate is
parked: its later events go to the dead letters too (in order), until
``jetsource projector dlq retry`` (or ``discard``) clears them, so an aggregate never
skips an event. Other aggregates keep flowing. Transient store trouble redelivers
the whole batch with backoff and never counts towards dead-lettering.

A model judges each event against what it has seen of its aggregate: a version it
applied already is a redelivery when it comes from the sequence it was applied from
(or an earlier one), else a second event for one version, refused and remembered as
refused. That holds only if the model sees an aggregate's events in stream order the
first time. An event whose batch failed transiently has not been seen (nothing was
written), and its redelivery comes after a backoff, behind later events that arrive
meanwhile: so the worker keeps such events (``_unseen``) and hands them to the model
again, in stream order, with the next batch, before any later event of their
aggregate can be applied. Their deliveries come back and are judged again (a
redelivery, or refused again and so filed once).

A worker that starts has no memory of what a predecessor (killed, or fenced) pulled
and did not ack: those deliveries come back only when their ack wait ends, behind
events that arrive meanwhile. So before it takes anything new, a worker reads its
consumer's in-flight window from the stream (the sequences after the ack floor up to
the last delivered, in its filter) and hands it to the model in stream order (see
``_judge_window``); the model applies what is next, refuses (and remembers) what is
not, and the deliveries, when they come back, are judged again the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge, Histogram

from jetsource.core import telemetry
from jetsource.core.clock import format_rfc3339_ns
from jetsource.core.codec import PayloadDecodeError, UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import (
    CorruptEventError,
    EventStoreUnavailableError,
    StreamMissingError,
)
from jetsource.eventstore import jsapi
from jetsource.eventstore.horizon import BeyondHorizonError
from jetsource.eventstore.jetstream import JetStreamEventStore, voided_event
from jetsource.eventstore.jsapi import Delivery, RawMessage
from jetsource.eventstore.refusals import writes_to
from jetsource.projection.contract import Outcome, ReadModel, StoreLost, TransientError
from jetsource.projection.control import discarded_sequences, version_dropped
from jetsource.projection.deadletters import NO_STORY, DeadLetters, aggregate_of, parked_story
from jetsource.projection.partitions import Fence, FencedError, Partition
from jetsource.projection.settings import ProjectorOptions

log = logging.getLogger("jetsource.projector")

EVENTS = Counter(
    "jetsource_projector_events_total",
    "Events handled by read model and outcome",
    ["model", "version", "outcome"],
)
BATCH_SECONDS = Histogram(
    "jetsource_projector_batch_seconds",
    "Time to apply and ack one batch",
    ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LAG = Gauge(
    "jetsource_projector_lag", "Messages not yet delivered to the model", ["model", "version"]
)
CHECKPOINT = Gauge(
    "jetsource_projector_checkpoint", "Last stream sequence handled", ["model", "version"]
)
STALLED = Gauge(
    "jetsource_projector_stalled",
    "1 while the model has work delivered but has done nothing for stall_after_s",
    ["model", "version"],
)
DEAD_LETTERS = Counter(
    "jetsource_projector_dead_letters_total", "Events filed as dead letters", ["model", "version"]
)
# Not "jetsource_projector_dead_letters": that is the family name of the counter above.
DEAD_LETTER_DEPTH = Gauge(
    "jetsource_projector_dead_letters_pending",
    "Dead letters waiting in the DLQ stream (counted at start, then as they are filed; "
    "recounted when an aggregate is released and every DEPTH_REFRESH_S while idle)",
    ["model", "version"],
)
FRESHNESS = Histogram(
    "jetsource_projector_freshness_seconds",
    "Append to visible: now minus the event's recorded time, when the model applied it",
    ["model", "version"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
)
# How long the worker waits for a message before it looks around (stop, dead-letter
# depth, the drop fence): messages are handed over as they arrive, never held for it.
# Below the drop fence's quarter second, so the fence's answer is fresh when an event
# comes after a pause.
IDLE_WAIT_S = 0.2
# A live worker sends the acks of applied events together: one write to NATS (a
# loopback send was a fifth of the projector's CPU under load when each batch sent
# its own) when the oldest has waited this long, when as many as half the
# ack-pending limit (at most ACK_BATCH) are held, when nothing arrives, and when the
# worker stops. An ack only spares a redelivery (which finds the events stored and
# changes nothing); the model's write makes an event visible and is never held back.
ACK_DELAY_S = 0.02
ACK_BATCH = 1000
# While idle, the dead-letter depth is recounted this often (letters retried or
# discarded by an operator leave the DLQ from another process).
DEPTH_REFRESH_S = 30.0
# The in-flight window read at start is read this many messages at a time (one batched
# direct get each) and bounded: at most WINDOW_SCAN_FACTOR times the consumer's
# ack-pending limit of messages are read (the window holds at most that many pending,
# among others of the stream acked out of order or outside the filter). Past the bound
# the rest of the window is left to its redeliveries, as before this reading.
WINDOW_PAGE = 500
WINDOW_SCAN_FACTOR = 4
# While idle, the worker looks around this often: its consumer still there (deleted by
# hand, or lost with JetStream's state, a worker pulled from nothing for good: it is
# created again from the replay start), and the model's birth mark still in its store
# (emptied while no event comes: built again without waiting for the next event,
# whose write would find it too).
MARK_CHECK_S = 5.0
# The consumer's metadata key holding the birth mark of the store it was built into: a
# consumer built into an emptied store (under another mark, or a mark gone) has a
# position worth nothing there.
BORN_METADATA = "jetsource_born"
# What stops a batch where it is (nothing acked, naked or filed): a fenced worker, and
# a store that lost the model version (built again from its replay start).
_HALT = (FencedError, StoreLost)


# The gauges of a model version are this process's: its workers of that version (one
# per partition it leases, or one) share the series. Each worker keeps its own values;
# the series show their sum (lag) or highest value (checkpoint, stalled, dead letters
# waiting, which every worker counts for the whole model), and are removed when the
# last of them stops (a version dropped, a lease gone to another replica): a stopped
# worker's last values stayed exported for ever, and a frozen lag, stall or dead-letter
# count kept its alert firing on a version that no longer ran here.
_EXPORTING: dict[tuple[str, str], list[Worker]] = {}


def _export_gauges(labels: tuple[str, str]) -> None:
    workers = _EXPORTING.get(labels)
    if not workers:
        for gauge in (LAG, CHECKPOINT, STALLED, DEAD_LETTER_DEPTH):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        return
    shown = [w._shown for w in workers]
    for gauge, key, combine in (
        (LAG, "lag", sum),
        (CHECKPOINT, "checkpoint", max),
        (STALLED, "stalled", max),
        (DEAD_LETTER_DEPTH, "dead_letters", max),
    ):
        values = [v[key] for v in shown if key in v]
        if values:
            gauge.labels(*labels).set(combine(values))
        else:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)


def newer_release_reason(event: UnknownEvent, model: str) -> str:
    """The dead letter's reason for an event a newer release wrote: what it is, the
    newest version this release knows, and what to do."""
    return (
        f"{event.newer_release}; upgrade the projector to a release that knows it, then "
        f"apply it to the model: `jetsource projector dlq retry --model {model}` (its "
        "story's later events wait behind it)"
    )


@dataclass
class WorkerStats:
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    unknown: int = 0
    filled: int = 0  # applied from the stream to fill a gap, ahead of redelivery
    last_seq: int = 0
    pending: int = 0
    started: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(
        self,
        nc: NATS,
        store: JetStreamEventStore,
        model: ReadModel,
        dead_letters: DeadLetters,
        options: ProjectorOptions,
        partition: Partition | None = None,
        fence: Fence | None = None,
        history: Any = None,
    ) -> None:
        """With a ``partition``, the worker consumes that partition of the stream's
        mirror (its own durable); with a ``fence``, it claims it before its first write
        and stops, writing nothing more, when a write finds it fenced. ``history``: the
        domain's history reader when its stream is compacted and the archive is read
        (``jetsource.archive.history.history_store``): the versions a gap needs come
        from it (they may have been archived and purged before this model applied
        them), and a rebuild of a store found emptied applies the archive first, as
        ``projector rebuild`` / ``reset`` do."""
        self.nc = nc
        self.store = store
        self.model = model
        self.spec = model.spec
        self.dlq = dead_letters
        self.o = options
        self.stats = WorkerStats()
        self.partition = partition
        self.fence = fence
        self.history: Any = history if history is not None else store
        self.fenced = False
        self._stream = partition.stream if partition else store.settings.stream
        self._durable = partition.durable(self.spec.durable) if partition else self.spec.durable
        self._prefix = store.settings.subject_prefix
        self._subjects: list[str] = []  # the consumer's filter (on ``self._stream``)
        self._pull = jsapi.PullConsumer(
            nc, self._stream, self._durable, options.pull_batch, options.pull_expires_s
        )
        # aggregate -> original sequences filed as dead letters (parked aggregates)
        self._parked: dict[str, set[int]] = {}
        self._failures: OrderedDict[int, int] = OrderedDict()
        self._waits: OrderedDict[int, int] = OrderedDict()  # seq -> rounds it waited
        self._discarded: set[int] = set()  # sequences discarded from this model's DLQ
        # Events handed to the model whose batch failed transiently: the model has not
        # judged them, and their deliveries come back after a backoff. They go to the
        # model with the next batch, ahead of later events (see the module's doc).
        # Bounded by the consumer's ack-pending limit (their deliveries are pending).
        self._unseen: dict[int, RecordedEvent] = {}
        self._progress_at = time.monotonic()
        # Since when (monotonic) the model's store has refused every write of this
        # worker (TransientError: OOM, READONLY, no answer...), and its last words;
        # None once a write goes through or nothing is left to write. /healthz names it.
        self._refused_since: float | None = None
        self._refused_why = ""
        # The dead-letter stream refusing to file an event (full, deleted, no answer):
        # since when, the last failure and its words. The event waits for redelivery
        # (nothing is acked unfiled); /healthz names the stream until one is filed.
        self._unfiled_since: float | None = None
        self._unfiled_at = 0.0
        self._unfiled_why = ""
        # Judging the in-flight window at start (``_judge``): its store refusals are
        # an outage as they are once running (the worker retries them until stopped).
        self._judging = False
        self._labels = (self.spec.name, str(self.spec.version))
        # Fields of every log line of this worker (structured logs: jetsource.core.logging).
        self._log = {"model": self.spec.name, "version": self.spec.version}
        self._depth_at = time.monotonic()
        self._lag_at = 0.0  # when the lag was last asked of the consumer in an outage
        self._shown: dict[str, float] = {}  # this worker's gauge values (_export_gauges)
        self._stop = asyncio.Event()
        self.running = False
        # Acks held to be sent together (only while ``run`` loops; see ACK_DELAY_S).
        self._held_acks: list[Delivery] = []
        self._held_since = 0.0
        self._hold_acks = False
        self._hold_limit = max(1, min(ACK_BATCH, options.max_ack_pending // 2))
        # The model's store lost what it held (a write found its birth mark gone): the
        # next start builds the version again from its replay start.
        self._lost = False
        self._born: str | None = None  # the store's birth mark this worker writes under
        self._mark_at = time.monotonic()
        self.rebuilds = 0  # times the store was found emptied and the version rebuilt

    async def ensure_consumer(self, from_seq: int | None = None) -> dict[str, Any]:
        await self.store.start()
        # The model's declared event types are its filter: it never receives others.
        # A fresh consumer starts where the model's contract says a build starts (or
        # at ``from_seq``: after a parallel build, where every partition got to).
        start = self.spec.replay_start
        config = jsapi.consumer_config(
            self._durable,
            f"{self._prefix}.>",
            self.o.ack_wait_s,
            self.o.max_ack_pending,
            opt_start_seq=from_seq or start.sequence,
        )
        subjects = self.spec.filter_subjects(self._prefix)
        if self.partition is not None:
            subjects = self.partition.filter_subjects(subjects)
            config["filter_subject"] = subjects[0]
        if len(subjects) > 1 or subjects[0] != config["filter_subject"]:
            del config["filter_subject"]
            config["filter_subjects"] = subjects
        if start.time_ns and not from_seq:
            config["deliver_policy"] = "by_start_time"
            config["opt_start_time"] = format_rfc3339_ns(start.time_ns)
        born = self._born
        if born is None and (read := getattr(self.model, "birth_mark", None)) is not None:
            born = await read()  # a consumer made without a start (a parallel build's)
        if born:
            config["metadata"] = {BORN_METADATA: born}
        self._subjects = subjects
        return await jsapi.ensure_consumer(
            self.store._replies, self._stream, config, self.store.settings.request_timeout_s
        )

    async def start(self) -> None:
        await self.model.setup()
        if self.fence is not None:
            await self.fence.claim()  # from here on, the previous owner writes nothing
        await self._check_store()
        consumer = await self.ensure_consumer()
        if consumer:  # the lag from the start, not from the first batch (none while idle)
            self._show(
                lag=int(consumer.get("num_pending") or 0)
                + int(consumer.get("num_ack_pending") or 0)
            )
        self._discarded = await discarded_sequences(self.nc, self.o.control_bucket, self.spec.name)
        letters = await self.dlq.list(self.spec)
        for letter in letters:
            story = parked_story(letter, self._prefix)
            self._parked.setdefault(story, set()).add(letter.original_seq)
        self._show(dead_letters=len(letters))
        self._depth_at = time.monotonic()
        await self._judge_window(consumer)

    def stop(self) -> None:
        self._stop.set()

    def _show(self, **values: float) -> None:
        """Set this worker's share of its version's gauges (lag, checkpoint, stalled,
        dead_letters) and export them."""
        self._shown.update(values)
        workers = _EXPORTING.setdefault(self._labels, [])
        if self not in workers:
            workers.append(self)
        _export_gauges(self._labels)

    def _unshow(self) -> None:
        """This worker stopped: its values leave the gauges (the series go with the
        last worker of its version)."""
        workers = _EXPORTING.get(self._labels, [])
        if self in workers:
            workers.remove(self)
        if not workers:
            _EXPORTING.pop(self._labels, None)
        _export_gauges(self._labels)

    async def _check_store(self) -> None:
        """Take the model's birth mark (see ``jetsource.projection.valkey``), and when
        the store lost what this worker's consumer built, start the consumer again
        from the replay start.

        Lost: a write of this worker found the mark gone or another one; or the
        consumer was built under a mark (its metadata) that the store no longer
        holds (emptied while the projector was down; with partitions, emptied and
        marked again by a sibling's rebuild); or, for a consumer from before marks
        were kept, there is no mark while the consumer has events acknowledged (so
        applied, or filed) and the model holds no checkpoint. A version with a
        checkpoint and no mark was written before marks were kept: it takes one, as a
        new version does. The rebuild applies each event once: the store holds only
        what was written under the new mark, and the version guard makes the rest
        redeliveries."""
        read = getattr(self.model, "birth_mark", None)
        if read is None:  # a store that keeps its position with its data
            return
        mark = await read()
        info = await jsapi.consumer_info(
            self.store._replies,
            self._stream,
            self._durable,
            self.store.settings.request_timeout_s,
        )
        born = (((info or {}).get("config") or {}).get("metadata") or {}).get(BORN_METADATA)
        lost = self._lost
        if not lost and info is not None:
            if born is not None:
                lost = born != mark
            elif mark is None:
                acked = int((info.get("ack_floor") or {}).get("stream_seq") or 0)
                checkpoint = await self.model.checkpoint()
                lost = bool(acked) and not checkpoint.seq and not checkpoint.applied
        if lost:
            log.error(
                "%s v%s: its store no longer holds it (emptied, restarted without "
                "persistence, or replaced; birth mark %s): building it again from its "
                "replay start (%s)",
                *self._labels,
                "gone" if mark is None else "changed",
                self.spec.replay_start,
                extra=self._log,
            )
            await jsapi.delete_consumer(
                self.store._replies,
                self._stream,
                self._durable,
                self.store.settings.request_timeout_s,
            )
            self._unseen.clear()
            self._waits.clear()
            self._failures.clear()
            self.rebuilds += 1
            EVENTS.labels(*self._labels, "store_lost").inc()
        self._born = await self.model.take_birth_mark()  # type: ignore[attr-defined]
        self._lost = False
        self._mark_at = time.monotonic()
        if lost and getattr(self.history, "archive", None) is not None:
            await self._apply_archive()
        warn = getattr(self.model, "store_warning", None)
        if warn is not None and (warning := await warn()):
            log.error("%s v%s: %s", *self._labels, warning, extra=self._log)

    async def _apply_archive(self) -> None:
        """A compacted stream's histories start at their horizons in the live stream:
        the archived part is applied first (merged in stream order with the live
        events among it), as a build does; the consumer then goes on from the live
        stream, what the archive applied coming back as redeliveries."""
        from jetsource.archive.replay import ReplayError, replay_archive

        async def letter(raw: RawMessage, aggregate_id: str, reason: str) -> None:
            # An archived event a newer release wrote: filed (once: not again on a
            # second replay) and its story parked, as on a delivery.
            if await self.dlq.filed(self.spec, aggregate_id, raw.seq):
                self._parked.setdefault(aggregate_id, set()).add(raw.seq)
                return
            await self.dlq.publish(self.spec, aggregate_id, raw, reason, 1)
            self._parked.setdefault(aggregate_id, set()).add(raw.seq)
            self.stats.dead_letters += 1
            DEAD_LETTERS.labels(*self._labels).inc()
            self._show(dead_letters=self._shown.get("dead_letters", 0) + 1)

        discarded = await discarded_sequences(self.nc, self.o.control_bucket, self.spec.name)
        try:
            applied = await replay_archive(
                self.store, self.history.archive, self.model, letter, discarded, self._dropped
            )
        except ReplayError as exc:  # e.g. another partition's worker wrote meanwhile, or
            # a drop or reset marked the version (ReplayFenced: the loop stops on it)
            log.warning("%s v%s: %s", *self._labels, exc, extra=self._log)
            return
        log.info(
            "%s v%s: %d events applied from the archive",
            *self._labels,
            applied,
            extra=self._log,
        )

    async def _look_around(self) -> None:
        """While idle, every MARK_CHECK_S: a consumer deleted meanwhile is created again
        from the replay start (what was applied comes back as redeliveries the version
        guard finds done); a store emptied meanwhile is a StoreLost."""
        if time.monotonic() - self._mark_at < MARK_CHECK_S:
            return
        self._mark_at = time.monotonic()
        try:
            info = await jsapi.consumer_info(
                self.store._replies,
                self._stream,
                self._durable,
                self.store.settings.request_timeout_s,
            )
        except Exception as exc:  # NATS away: its health says so; looked at again later
            log.debug("%s v%s: consumer not read: %r", *self._labels, exc, extra=self._log)
            info = {}
        if info is None and not await self._dropped():
            log.error(
                "%s v%s: its consumer %s on %s was deleted (by hand, or lost with "
                "JetStream's state): created again from the replay start (%s); events "
                "applied already are found applied",
                *self._labels,
                self._durable,
                self._stream,
                self.spec.replay_start,
                extra=self._log,
            )
            EVENTS.labels(*self._labels, "consumer_lost").inc()
            self._unseen.clear()
            self._waits.clear()
            self._failures.clear()
            await self.ensure_consumer()
        lost = getattr(self.model, "store_lost", None)
        if lost is None:
            return
        try:
            gone = await lost()
        except TransientError:
            return  # the store does not answer: its health says so; looked at again later
        if gone and not await self._dropped():
            raise StoreLost("its birth mark is gone (found while idle)")

    async def _judge_window(self, consumer: Mapping[str, Any] | None) -> None:
        """Hand the model, in stream order, what the consumer delivered and has not
        seen acked: the sequences after its ack floor up to the last delivered one.

        A predecessor killed after pulling them (or fenced) left them in flight, and
        they come back only when their ack wait ends, behind whatever arrives
        meanwhile: an aggregate's next event would be applied first, and a poison
        among them (a second event for a version) would then look like a redelivery
        and never be filed. Read from the stream now, before anything new, each is
        judged in its place: applied if it is next (its delivery then finds it stored),
        refused if it is not (the model remembers the refusal, so its delivery is
        refused again, and filed once after ``max_deliver``). Nothing is acked or filed
        here; the deliveries are.

        Reading the window again is harmless: what was applied (acked out of order, or
        applied by a live sibling sharing the durable) is an exact redelivery to the
        model; an aggregate with dead letters is skipped (its deliveries follow them);
        what does not decode is left to its delivery. Bounded (see WINDOW_SCAN_FACTOR)."""
        if not consumer or not int(consumer.get("num_ack_pending") or 0):
            return
        floor = int((consumer.get("ack_floor") or {}).get("stream_seq") or 0)
        last = int((consumer.get("delivered") or {}).get("stream_seq") or 0)
        root = self.partition.root if self.partition is not None else self._prefix
        budget = WINDOW_SCAN_FACTOR * self.o.max_ack_pending
        seq, judged = floor + 1, 0
        while seq <= last and not self._stop.is_set():
            if budget <= 0:
                log.warning(
                    "%s v%s: in-flight window past %d messages: sequences %d..%d are "
                    "left to their redeliveries",
                    *self._labels,
                    WINDOW_SCAN_FACTOR * self.o.max_ack_pending,
                    seq,
                    last,
                    extra=self._log,
                )
                break
            page = await jsapi.direct_get_page(
                self.store._replies,
                self._stream,
                f"{root}.>",
                seq,
                min(WINDOW_PAGE, budget, last - seq + 1),
                self.store.settings.request_timeout_s,
            )
            window = [raw for raw in page.messages if raw.seq <= last]
            if not window:
                break
            budget -= len(window)
            records = [
                record
                for raw in window
                if any(jsapi.subject_matches(s, raw.subject) for s in self._subjects)
                and (record := await self._window_record(raw)) is not None
            ]
            judged += len(records)
            await self._judge(records)
            seq = window[-1].seq + 1
            if page.pending == 0:
                break
        if judged:
            log.info(
                "%s v%s: %d in-flight events (sequences %d..%d) judged from the stream",
                *self._labels,
                judged,
                floor + 1,
                last,
                extra=self._log,
            )

    async def _window_record(self, raw: RawMessage) -> RecordedEvent | None:
        """An event of the in-flight window as the model would take it from its
        delivery; None for what its delivery handles alone (a parked aggregate, a
        sequence discarded from this model's dead letters, an undecodable message, a
        type the model does not consume, an event a newer release wrote)."""
        if self.partition is not None:
            subject = self.partition.origin_subject(raw.subject)
            raw = RawMessage(subject, raw.seq, raw.time_ns, raw.headers, raw.data)
        parked = self._parked.get(aggregate_of(raw.subject, self._prefix))
        if (parked and raw.seq >= min(parked)) or raw.seq in self._discarded:
            return None
        try:
            record = await self.store.open(raw)
        except Exception:  # undecodable, corrupt, or not readable now: as delivered
            return None
        types = self.spec.consumed_events
        if types is not None and record.event_type not in types:
            return None
        if isinstance(record.event, UnknownEvent) and record.event.newer_release:
            return None  # dead-lettered on its delivery (or stepped over, if voided)
        return voided_event(record) if self.store.known_voided(raw.seq) else record

    async def _judge(self, records: list[RecordedEvent]) -> None:
        """Apply events of the in-flight window; while the store does not answer, try
        again with backoff (nothing new is taken before them), until stopped."""
        tries = 0
        self._judging = True
        try:
            while records and not self._stop.is_set():
                try:
                    outcome = await self.model.apply(records)
                    self._store_wrote()
                except (TransientError, EventStoreUnavailableError) as exc:
                    self._store_refused(exc)
                    tries += 1
                    log.warning(
                        "%s v%s: in-flight window: %s; trying again",
                        *self._labels,
                        exc,
                        extra={**self._log, "rate_key": f"window {self._labels}"},
                    )
                    await asyncio.sleep(self.o.backoff(tries))
                    continue
                except _HALT:
                    raise
                except Exception:
                    log.exception(
                        "%s v%s: in-flight window failed; isolating aggregates",
                        *self._labels,
                        extra=self._log,
                    )
                    outcome = await self._isolate(records)
                self.stats.applied += outcome.applied
                self.stats.filled += outcome.applied
                if outcome.applied:
                    # Applied, as the status counts them (and as a gap filled in a batch
                    # counts): outcome="applied" fell behind the status's applied.
                    EVENTS.labels(*self._labels, "applied").inc(outcome.applied)
                    EVENTS.labels(*self._labels, "filled").inc(outcome.applied)
                return
        finally:
            self._judging = False

    async def run(self, until_caught_up: bool = False) -> None:
        """Process batches until stopped (or, with ``until_caught_up``, until the
        consumer has nothing left). A batch in progress is always finished. A store
        found emptied (``StoreLost``) is built again from the replay start, here.
        When it ends, its values leave the gauges."""
        try:
            await self._run_until_done(until_caught_up)
        finally:
            self._unshow()

    async def _run_until_done(self, until_caught_up: bool) -> None:
        while True:
            try:
                await self._run(until_caught_up)
                return
            except FencedError as exc:
                # Another worker holds this partition now: stop without acking, naking
                # or filing anything; what was delivered here is redelivered to the owner.
                self.fenced = True
                log.warning("%s v%s: fenced: %s", *self._labels, exc, extra=self._log)
                return
            except StoreLost as exc:
                if self._stop.is_set() or await self._dropped():
                    return  # a version being dropped or reset: the admin command owns it
                log.warning("%s v%s: %s", *self._labels, exc, extra=self._log)
                self._lost = True

    async def _run(self, until_caught_up: bool) -> None:
        self._refused_since = None
        await self.start()
        self.running = True
        # A build (until caught up) acks each batch: it asks the consumer whether
        # anything is pending when idle, and held acks would still count.
        self._hold_acks = not until_caught_up
        try:
            while not self._stop.is_set():
                batch = await self._pull.next_batch(self.o.batch_size, IDLE_WAIT_S)
                if batch and self.partition is not None:
                    batch = [self.partition.origin(d) for d in batch]
                if batch:
                    # Fenced: a version being dropped writes nothing more (`projector drop`
                    # marks it in the control bucket before deleting anything).
                    if await self._dropped():
                        log.warning(
                            "%s v%s: dropped; this worker stops", *self._labels, extra=self._log
                        )
                        return
                    await self.process(batch)
                    if self._held_acks and (
                        len(self._held_acks) >= self._hold_limit
                        or time.monotonic() - self._held_since >= ACK_DELAY_S
                    ):
                        await self._send_acks()
                else:
                    await self._send_acks()
                    if not until_caught_up:
                        # The fence's answer is kept a quarter second: asked while idle
                        # too, so the first event after a pause does not wait for the
                        # control bucket's round trip (its answer acts on the next batch).
                        await self._dropped()
                    self._progress_at = time.monotonic()  # idle is not stalled
                    if not self._unseen:
                        self._store_wrote()  # nothing refused is waiting: no outage seen
                    self._show(stalled=0)
                    if time.monotonic() - self._depth_at > DEPTH_REFRESH_S:
                        await self._recount_dead_letters()
                    await self._look_around()
                    if until_caught_up and await self.caught_up():
                        return
        finally:
            self._hold_acks = False
            self.running = False
            try:
                await self._send_acks()  # what was applied (before a fence too) is done
            except Exception as exc:  # only spares redeliveries, which change nothing
                log.debug("%s v%s: acks not sent: %r", *self._labels, exc, extra=self._log)
            await self._pull.stop()

    async def _dropped(self) -> bool:
        return await version_dropped(
            self.nc, self.o.control_bucket, self.spec.name, self.spec.version
        )

    async def caught_up(self) -> bool:
        info = await jsapi.consumer_info(
            self.store._replies, self._stream, self._durable, self.o.ack_wait_s
        )
        if info is None:
            return False
        self.stats.pending = int(info["num_pending"])
        self._show(lag=self.stats.pending + int(info["num_ack_pending"]))
        return self.stats.pending == 0 and int(info["num_ack_pending"]) == 0

    async def _lag_while_refused(self) -> None:
        """The lag while the store refuses batches: ``_account`` is not reached, and
        what waits for redelivery is delivered (ack pending), not pending, so the gauge
        would stay at its last value (0 when caught up) through an outage of any length.
        The consumer is asked, at most once a second, within the store's request
        timeout; no answer leaves the gauge as it was."""
        now = time.monotonic()
        if now - self._lag_at < 1.0:
            return
        self._lag_at = now
        try:
            info = await jsapi.consumer_info(
                self.store._replies,
                self._stream,
                self._durable,
                self.store.settings.request_timeout_s,
            )
        except Exception as exc:  # NATS away too: the gauge keeps its last value
            log.debug("%s v%s: lag not refreshed: %r", *self._labels, exc, extra=self._log)
            return
        if info is not None:
            self._show(
                lag=int(info.get("num_pending") or 0) + int(info.get("num_ack_pending") or 0)
            )

    # -- one batch --------------------------------------------------------------

    async def process(self, batch: Sequence[Delivery]) -> None:
        """One batch, in a span (when tracing) that continues the trace of the first
        event's append (its ``traceparent`` header) and links the others'."""
        if not telemetry.enabled():
            await self._process(batch)
            return
        with telemetry.batch_span(
            f"project {self.spec.name} v{self.spec.version}",
            (d.headers for d in batch),
            {
                "messaging.system": "nats",
                "messaging.destination.name": self._stream,
                "messaging.batch.message_count": len(batch),
                "jetsource.model": self.spec.name,
                "jetsource.model_version": self.spec.version,
                "jetsource.first_seq": batch[0].stream_seq,
                "jetsource.last_seq": batch[-1].stream_seq,
            },
        ):
            await self._process(batch)

    async def _process(self, batch: Sequence[Delivery]) -> None:
        started = time.perf_counter()
        by_seq = {d.stream_seq: d for d in batch}
        records: list[RecordedEvent] = []
        acks: list[Delivery] = []
        checked: dict[str, bool] = {}
        for d in batch:
            raw = RawMessage(d.subject, d.stream_seq, d.time_ns, d.headers, d.data)
            aggregate_id = aggregate_of(d.subject, self._prefix)
            if (
                aggregate_id in self._parked
                # What comes before its first dead letter is not behind it: applied.
                and d.stream_seq >= min(self._parked[aggregate_id])
                # Subjects naming no story ('_') are no story's events: none is behind
                # another's letter (each is dead-lettered for its own reason).
                and (aggregate_id != NO_STORY or d.stream_seq in self._parked[aggregate_id])
                and await self._still_parked(aggregate_id, checked)
            ):
                if d.stream_seq in self._parked[aggregate_id]:
                    acks.append(d)  # filed already; the ack was lost
                else:
                    first = min(self._parked[aggregate_id])
                    await self._dead_letter(
                        d, aggregate_id, f"parked behind dead letter of sequence {first}", 0
                    )
                continue
            try:
                record = await self.store.open(raw)
            except PayloadDecodeError as exc:
                if await self.store.voided(aggregate_id, d.stream_seq):
                    acks.append(d)  # voided by an operator: in no history
                    continue
                await self._refused(d, aggregate_id, f"undecodable: {exc}")
                continue
            types = self.spec.consumed_events
            if types is not None and record.event_type not in types:
                acks.append(d)
                continue
            if isinstance(record.event, UnknownEvent):
                if (
                    record.event.newer_release
                    # Discarded from this model's dead letters (a rebuild steps over it
                    # at its place, as `dlq discard` stepped the live model past it).
                    and d.stream_seq not in self._discarded
                    and not await self.store.voided(aggregate_id, d.stream_seq)
                ):
                    # Skipped, its place passed, the model had never applied it after
                    # the upgrade: poison for this release, named once (its story parks
                    # behind it; the others flow on).
                    await self._dead_letter(
                        d, aggregate_id, newer_release_reason(record.event, self.spec.name), 1
                    )
                    continue
                self.stats.unknown += 1
                EVENTS.labels(*self._labels, "unknown").inc()
            if self.store.known_voided(d.stream_seq) or (
                d.stream_seq in self._discarded
                and isinstance(record.event, UnknownEvent)
                and record.event.newer_release
            ):
                # Voided by an operator, even where it reads as a valid event: a no-op
                # at its place, as every stream reader and a rebuild read it.
                record = voided_event(record)
            records.append(record)
        records = self._with_unseen(records)
        outcome = Outcome()
        filled = 0
        if records:
            try:
                outcome = await self.model.apply(records)
                self._store_wrote()
                if (outcome.waiting or outcome.failed) and self.spec.contiguous:
                    filled = await self._settle(records, outcome)
            except (TransientError, EventStoreUnavailableError) as exc:
                self._store_refused(exc)
                # Rate-limited per worker: an outage gives a line every few seconds with
                # the count of those left out, not one per batch.
                log.warning(
                    "%s v%s: %s; redelivering",
                    *self._labels,
                    exc,
                    extra={
                        **self._log,
                        "events": len(records),
                        "rate_key": f"redelivering {self._labels}",
                    },
                )
                for r in records:
                    if r.stream_seq in by_seq:
                        await jsapi.nak(self.nc, by_seq[r.stream_seq], self.o.backoff(1))
                # Not seen by the model (or not known to be): before any later event of
                # their aggregates, it sees them with the next batch.
                self._unseen = {r.stream_seq: r for r in records}
                await self._ack(acks)
                await self._lag_while_refused()
                return
            except _HALT:
                raise
            except Exception:
                log.exception(
                    "%s v%s: batch failed; isolating aggregates", *self._labels, extra=self._log
                )
                outcome = await self._isolate(records)
        acks += [by_seq[s] for s in outcome.done if s in by_seq]
        await self._ack(acks)
        for done in acks:
            self._waits.pop(done.stream_seq, None)
        for seq, reason in outcome.waiting.items():
            if seq not in by_seq:
                continue  # an unseen event handed over again: its delivery comes back
            d = by_seq[seq]
            waits = self._waits.pop(seq, 0) + 1
            if waits >= self.o.max_waits:
                # Waiting has a bound: what still waits after this many rounds (with
                # gaps filled from the stream) will not be applied by waiting longer.
                await self._refused(
                    d, aggregate_of(d.subject, self._prefix), f"waited {waits} times: {reason}"
                )
                continue
            self._waits[seq] = waits
            await jsapi.nak(self.nc, d, self.o.waiting_delay_s)
        while len(self._waits) > 100_000:
            self._waits.popitem(last=False)
        for seq, reason in outcome.failed.items():
            if seq not in by_seq:
                continue  # an unseen event handed over again: refused on its delivery
            d = by_seq[seq]
            await self._refused(d, aggregate_of(d.subject, self._prefix), reason)
        self._account(batch, outcome, filled, time.perf_counter() - started)
        self._observe_freshness(records, outcome)

    def _with_unseen(self, records: list[RecordedEvent]) -> list[RecordedEvent]:
        """The batch's events and, in stream order among them, the unseen events of a
        batch that failed transiently (each once: a redelivered one as delivered now).
        From here the model has judged them, unless this apply fails transiently too
        (then they are unseen again). An unseen event of an aggregate parked since is
        left out: its delivery follows the dead letter."""
        unseen, self._unseen = self._unseen, {}
        if not unseen:
            return records
        delivered = {r.stream_seq for r in records}
        earlier = [
            voided_event(r) if self.store.known_voided(seq) else r
            for seq, r in unseen.items()
            if seq not in delivered and r.aggregate_id not in self._parked
        ]
        return sorted([*earlier, *records], key=lambda r: r.stream_seq) if earlier else records

    async def _settle(self, records: list[RecordedEvent], outcome: Outcome) -> int:
        """Apply what the model left waiting or refused, without waiting for redelivery.

        An aggregate's events wait when an earlier version is not applied yet: after a
        crash its earlier events are redelivered only when their ack wait ends, in any
        order, so a hot aggregate could creep forward a few events per round. Instead
        the missing versions are read from the stream and applied first, in order, with
        the waiting ones. A gap the stream cannot fill (no such versions before the
        event) is refused, so it reaches the dead letters instead of waiting for good.
        A refused or gap-making event an operator voided is stepped over. Returns how
        many events were applied from the stream (not delivered in this batch)."""
        held: OrderedDict[str, list[RecordedEvent]] = OrderedDict()
        for r in records:
            if r.stream_seq in outcome.waiting or r.stream_seq in outcome.failed:
                held.setdefault(r.aggregate_id, []).append(r)
        filled = 0
        for aggregate_id, evs in held.items():
            if any(outcome.waiting.get(e.stream_seq, "").startswith("behind") for e in evs[:1]):
                continue  # behind an event refused in this batch: its turn comes after
            first = evs[0]
            position = await self.model.position(aggregate_id)
            again: list[RecordedEvent] = []
            if first.stream_seq in outcome.failed or first.version > position + 1:
                # Voided by an operator for every reader, or discarded from this
                # model's dead letters before (a rebuild steps over it by rule).
                stepped_over = first.stream_seq in self._discarded and (
                    first.stream_seq in outcome.failed
                )
                if stepped_over or await self.store.voided(aggregate_id, first.stream_seq):
                    if first.version == position + 1:
                        again = [voided_event(first), *evs[1:]]  # a no-op at its place
                    else:
                        outcome.waiting.pop(first.stream_seq, None)
                        outcome.failed.pop(first.stream_seq, None)
                        outcome.done.append(first.stream_seq)  # no place in the history
                        continue
                elif first.stream_seq in outcome.failed:
                    continue
                else:
                    try:
                        missing = await self.history.read_aggregate(
                            aggregate_id,
                            from_version=position + 1,
                            to_version=first.version - 1,
                            to_seq=first.stream_seq - 1,
                        )
                    except BeyondHorizonError as exc:
                        # Archived and purged before this model applied them, and
                        # the archive is not read here: no waiting brings them back.
                        outcome.waiting.pop(first.stream_seq, None)
                        outcome.failed[first.stream_seq] = (
                            f"versions {position + 1}..{first.version - 1} of "
                            f"{aggregate_id!r} were compacted into the archive before "
                            f"this model applied them ({exc}); with the archive read "
                            "(JETSOURCE_ARCHIVE__READ) the projector fills them from it, "
                            "or rebuild the model (`jetsource projector reset`)"
                        )
                        continue
                    except CorruptEventError as exc:
                        log.warning(
                            "%s v%s: gap of %s: %s",
                            *self._labels,
                            aggregate_id,
                            exc,
                            extra={**self._log, "aggregate": aggregate_id},
                        )
                        continue  # the corrupt message is dead-lettered on its own delivery
                    # A newer release's event discarded from this model's dead letters:
                    # a no-op at its place, as on its delivery.
                    missing = [
                        voided_event(m)
                        if m.stream_seq in self._discarded
                        and isinstance(m.event, UnknownEvent)
                        and m.event.newer_release
                        else m
                        for m in missing
                    ]
                    if any(
                        isinstance(m.event, UnknownEvent) and m.event.newer_release for m in missing
                    ):
                        continue  # dead-lettered on its own delivery, never applied here
                    if [m.version for m in missing] != list(range(position + 1, first.version)):
                        outcome.waiting.pop(first.stream_seq, None)
                        outcome.failed[first.stream_seq] = (
                            f"version gap: {aggregate_id!r} has no version {position + 1} "
                            f"before sequence {first.stream_seq} (this event says "
                            f"version {first.version})"
                        )
                        continue
                    again = [*missing, *evs]
            else:
                again = evs  # the stored version moved under us (a replay): once more
            for e in evs:
                outcome.waiting.pop(e.stream_seq, None)
                outcome.failed.pop(e.stream_seq, None)
            result = await self.model.apply(again)
            mine = {e.stream_seq for e in evs}
            outcome.done.extend(s for s in result.done if s in mine)
            outcome.waiting.update({s: r for s, r in result.waiting.items() if s in mine})
            outcome.failed.update({s: r for s, r in result.failed.items() if s in mine})
            # The missing versions come first: none of ours applies before all of them.
            applied_from_stream = min(len(again) - len(evs), result.applied)
            outcome.applied += result.applied - applied_from_stream
            filled += applied_from_stream
            if applied_from_stream:
                EVENTS.labels(*self._labels, "filled").inc(applied_from_stream)
        return filled

    async def _isolate(self, records: list[RecordedEvent]) -> Outcome:
        """A handler raised for the batch: apply aggregate by aggregate, so one bad
        aggregate fails alone; within a failing aggregate event by event, so the event
        that raises is the one refused (the first of its batch was dead-lettered with
        another's error, and the poison parked behind it: discarding the letter named
        dropped a good event)."""
        outcome = Outcome()
        groups: OrderedDict[str, list[RecordedEvent]] = OrderedDict()
        for r in records:
            groups.setdefault(r.aggregate_id, []).append(r)
        for evs in groups.values():
            if await self._apply_alone(evs, [], outcome) != "raised" or len(evs) == 1:
                continue
            for i in range(len(evs)):
                if await self._apply_alone(evs[i : i + 1], evs[i + 1 :], outcome) != "applied":
                    break
        return outcome

    async def _apply_alone(
        self, evs: list[RecordedEvent], behind: list[RecordedEvent], outcome: Outcome
    ) -> str:
        """Apply ``evs`` on their own into ``outcome``: "applied", "away" (the store:
        they and ``behind`` wait, with the next batch) or "raised" (one event: refused,
        ``behind`` waiting behind it; a group: left to the caller)."""
        try:
            outcome.merge(await self.model.apply(evs))
            self._store_wrote()
            return "applied"
        except _HALT:
            raise
        except (TransientError, EventStoreUnavailableError) as exc:
            self._store_refused(exc)
            for e in [*evs, *behind]:
                outcome.waiting[e.stream_seq] = "store unavailable"
                self._unseen[e.stream_seq] = e  # not judged: with the next batch
            return "away"
        except Exception as exc:
            if len(evs) == 1:
                outcome.failed[evs[0].stream_seq] = f"handler error: {exc!r}"
                for e in behind:
                    outcome.waiting[e.stream_seq] = f"behind failed sequence {evs[0].stream_seq}"
            return "raised"

    async def _ack(self, deliveries: Sequence[Delivery]) -> None:
        """Ack now, or (while ``run`` loops) hold the acks to send them together."""
        if not deliveries:
            return
        if not self._held_acks:
            self._held_since = time.monotonic()
        self._held_acks += deliveries
        if not self._hold_acks:
            await self._send_acks()

    async def _send_acks(self) -> None:
        held, self._held_acks = self._held_acks, []
        for d in held:
            await jsapi.ack(self.nc, d)

    async def _still_parked(self, aggregate_id: str, checked: dict[str, bool]) -> bool:
        """Parked until its dead letters are gone (retried or discarded elsewhere)."""
        if aggregate_id not in checked:
            checked[aggregate_id] = await self.dlq.pending(self.spec, aggregate_id)
            if not checked[aggregate_id]:
                del self._parked[aggregate_id]
                await self._recount_dead_letters()  # retried or discarded elsewhere
        return checked[aggregate_id]

    async def _refused(self, d: Delivery, aggregate_id: str, reason: str) -> None:
        tries = self._failures.pop(d.stream_seq, 0) + 1
        if tries >= self.o.max_deliver:
            await self._dead_letter(d, aggregate_id, reason, tries)
            return
        self._failures[d.stream_seq] = tries
        while len(self._failures) > 100_000:
            self._failures.popitem(last=False)
        log.warning(
            "%s v%s: seq %d refused (%d): %s",
            *self._labels,
            d.stream_seq,
            tries,
            reason,
            extra={**self._log, "aggregate": aggregate_id, "seq": d.stream_seq, "tries": tries},
        )
        EVENTS.labels(*self._labels, "refused").inc()
        await jsapi.nak(self.nc, d, self.o.backoff(tries))

    async def _dead_letter(self, d: Delivery, aggregate_id: str, reason: str, tries: int) -> None:
        if self.fence is not None:
            await self.fence.check()  # a worker that lost its lease files nothing
        raw = RawMessage(d.subject, d.stream_seq, d.time_ns, d.headers, d.data)
        try:
            with writes_to(self.dlq.stream, "restarting the service creates it again (empty)"):
                await self.dlq.publish(self.spec, aggregate_id, raw, reason, tries)
        except (
            EventStoreUnavailableError,
            StreamMissingError,
            TimeoutError,
            jsapi.JsApiError,
            nats.errors.Error,
        ) as exc:
            await self._not_filed(d, aggregate_id, tries, exc)
            return
        self._unfiled_since = None
        self._parked.setdefault(aggregate_id, set()).add(d.stream_seq)
        await jsapi.ack(self.nc, d)
        # Progress: filed and acked. A stream busy with only a parked story's events
        # for stall_after_s read as stalled, and /livez restarted the process.
        self._progress_at = time.monotonic()
        self.stats.dead_letters += 1
        DEAD_LETTERS.labels(*self._labels).inc()
        self._show(dead_letters=self._shown.get("dead_letters", 0) + 1)
        log.error(
            "%s v%s: seq %d dead-lettered: %s",
            *self._labels,
            d.stream_seq,
            reason,
            extra={**self._log, "aggregate": aggregate_id, "seq": d.stream_seq, "tries": tries},
        )

    async def _not_filed(
        self, d: Delivery, aggregate_id: str, tries: int, exc: BaseException
    ) -> None:
        """The dead-letter stream did not take the event (full, sealed, deleted, no
        answer): it is not acked, so it comes back and is filed then (its refusals are
        kept: it goes to the dead letters again at once). A worker crashed here before,
        restarted and waited out the ack wait each time, with /healthz 200."""
        now = time.monotonic()
        if self._unfiled_since is None:
            self._unfiled_since = now
        self._unfiled_at = now
        self._unfiled_why = str(exc) or type(exc).__name__
        if tries:
            self._failures[d.stream_seq] = tries - 1
        log.warning(
            "%s v%s: seq %d not dead-lettered (%s); redelivered to file it again",
            *self._labels,
            d.stream_seq,
            self._unfiled_why,
            extra={
                **self._log,
                "aggregate": aggregate_id,
                "seq": d.stream_seq,
                "rate_key": f"unfiled {self._labels}",
            },
        )
        EVENTS.labels(*self._labels, "refused").inc()
        with contextlib.suppress(Exception):  # NATS away: its ack wait brings it back
            await jsapi.nak(self.nc, d, self.o.backoff(min(max(tries, 1), 2)))

    async def _recount_dead_letters(self) -> None:
        """Set the dead-letter depth from the DLQ stream; on failure keep the last value."""
        self._depth_at = time.monotonic()
        try:
            depth = await self.dlq.count(self.spec)
        except Exception as exc:
            log.debug("%s v%s: dead letters not counted: %r", *self._labels, exc, extra=self._log)
            return
        self._show(dead_letters=depth)

    def _observe_freshness(self, records: Sequence[RecordedEvent], outcome: Outcome) -> None:
        """Append-to-visible time of each event the model took in this batch."""
        if not outcome.done:
            return
        done = set(outcome.done)
        now_ns = time.time_ns()
        histogram = FRESHNESS.labels(*self._labels)
        for r in records:
            if r.stream_seq in done:
                histogram.observe(max(0, now_ns - r.recorded_at_ns) / 1e9)

    def _store_refused(self, exc: BaseException) -> None:
        if self._refused_since is None:
            self._refused_since = time.monotonic()
        self._refused_why = str(exc) or type(exc).__name__

    def _store_wrote(self) -> None:
        self._refused_since = None

    @property
    def store_outage(self) -> str | None:
        """Running, and every write of the model to its store refused for
        ``store_outage_after_s`` (events waiting for redelivery): what the store said."""
        if not (self.running or self._judging):
            return None
        now = time.monotonic()
        since = self._refused_since
        if since is not None and now - since >= self.o.store_outage_after_s:
            return (
                f"{self.spec.name} v{self.spec.version}: {self.spec.store} refuses writes"
                f" for {now - since:.0f} s ({self._refused_why})"
            )
        since = self._unfiled_since
        if self._unfiled and since is not None and now - since >= self.o.store_outage_after_s:
            return (
                f"{self.spec.name} v{self.spec.version}: dead-letter stream {self.dlq.stream}"
                f" refuses writes for {now - since:.0f} s ({self._unfiled_why}); the events"
                " it cannot file wait for redelivery"
            )
        return None

    @property
    def refusing(self) -> bool:
        """Its store refuses the writes of the batch at hand (a store outage, however
        short so far): a stall it explains is the store's, not this process's."""
        return (self.running or self._judging) and (
            self._refused_since is not None or self._unfiled
        )

    @property
    def _unfiled(self) -> bool:
        """A dead letter refused, and tried again within a redelivery: an event voided or
        discarded meanwhile (never filed, never tried again) does not keep it."""
        return self._unfiled_since is not None and (
            time.monotonic() - self._unfiled_at
            <= self.o.ack_wait_s + max(self.o.backoff_s, default=0)
        )

    @property
    def stalled(self) -> bool:
        """Running, with work delivered, and nothing done for ``stall_after_s``."""
        return self.running and time.monotonic() - self._progress_at > self.o.stall_after_s

    def _account(
        self, batch: Sequence[Delivery], outcome: Outcome, filled: int, seconds: float
    ) -> None:
        s = self.stats
        s.batches += 1
        s.applied += outcome.applied + filled
        s.filled += filled
        if outcome.done or outcome.failed or filled:
            self._progress_at = time.monotonic()
        stalled = 1 if self.stalled else 0
        duplicates = max(0, len(outcome.done) - outcome.applied)
        s.duplicates += duplicates
        last = batch[-1]  # the latest delivery: its count of what is left is the newest
        # The highest sequence, not the last delivered: a redelivery of an older event
        # (after a nak's backoff) can end a batch of newer ones.
        s.last_seq = max(s.last_seq, max(d.stream_seq for d in batch))
        s.pending = last.pending
        EVENTS.labels(*self._labels, "applied").inc(outcome.applied + filled)
        if duplicates:
            EVENTS.labels(*self._labels, "duplicate").inc(duplicates)
        if outcome.waiting:
            EVENTS.labels(*self._labels, "waiting").inc(len(outcome.waiting))
        BATCH_SECONDS.labels(*self._labels).observe(seconds)
        self._show(lag=last.pending, checkpoint=s.last_seq, stalled=stalled)
