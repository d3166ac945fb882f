"""Repair of a poisoned aggregate without deleting anything.

A message that is not a valid event at its place (it does not decode, its envelope
is empty or names another aggregate, its version breaks the chain, or the domain
refuses it) stops every reader of its aggregate: queries and commands answer
DATA_LOSS naming its stream sequence, and each read model files it (and what follows
it) as dead letters. ``void_sequence`` records an operator's void of that sequence in
the stream (the log stays append-only), after which every reader steps over it: the
fold, time travel, the publisher, the projector and the snapshotter. Then it clears
the models' dead letters of that aggregate: the voided one is dropped (or stepped
over, where it held the aggregate's next version), the ones parked behind it are
applied again in order. A model that had applied the voided message (it read as a
valid event) gets the aggregate replayed from the stream, without it.

Each domain has its own stream, and stream sequences of different streams coincide:
the void names its domain, or is found from the dead letters of that sequence (one
domain's), or is the projection's only domain; otherwise it is refused, naming
``domain``, rather than voiding another stream's message at the same number.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from nats.errors import NoRespondersError

from jetsource.core.codec import PayloadDecodeError
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError, ValidationError
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore, voided_event
from jetsource.projection import admin
from jetsource.projection.admin import AdminError
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import BUILDING, LIVE
from jetsource.projection.deadletters import aggregate_of
from jetsource.projection.snapshots import SnapshotModel

CAUGHT_UP_S = 10.0  # how long a void waits for a model's projector to pass the sequence


@dataclass
class VoidReport:
    seq: int
    aggregate_id: str
    voided_before: bool
    domain: str = ""
    stream: str = ""
    # model "name vN" -> what happened to its dead letters of the aggregate
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A plan (plan_void): what fails and what is left to rebuild is known only by voiding.
    dry_run: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "aggregate_id": self.aggregate_id,
            "voided_before": self.voided_before,
            "domain": self.domain,
            "stream": self.stream,
            "models": self.models,
            "left_to_rebuild": None if self.dry_run else self.left_to_rebuild(),
        }

    def left_to_rebuild(self) -> list[str]:
        """Model versions that applied the voided event and could not be written
        again without it: only a side-by-side rebuild (or a reset) puts them right."""
        return [
            model
            for model, entry in self.models.items()
            if "replayed" in entry and not entry["replayed"] and not entry.get("not_yet_applied")
        ]


async def void_sequence(
    p: Projection,
    seq: int,
    reason: str,
    actor: str,
    domain: str | None = None,
    caught_up_s: float = CAUGHT_UP_S,
) -> VoidReport:
    domain = await _domain_of(p, seq, domain)
    store = p.domain_store(domain)
    mine = {m for m in p.domains.models() if p.domains.owner(m).name == domain}
    await _refuse_no_aggregate(p, store, sorted(mine), seq)
    aggregate_id, before = await store.void(seq, reason, actor)
    report = VoidReport(seq, aggregate_id, before, domain, store.settings.stream)
    # The story's letters alone (a void read every dead letter of the stream, with
    # its payload, to find them).
    letters = [
        d
        for m in sorted(mine)
        for d in await p.dead_letters.of_aggregate(m, aggregate_id)
        if d.aggregate_id == aggregate_id
    ]
    record = await _record_at(store, seq)
    for key in sorted({(d.model, d.version) for d in letters}):
        name, version = key
        model = p.model(name, version)
        entry: dict[str, Any] = {"dropped": [], "stepped_over": [], "retried": [], "failed": {}}
        for letter in [d for d in letters if (d.model, d.version) == key]:
            if letter.original_seq != seq:
                continue
            position = await model.position(aggregate_id)
            if record is not None and record.version == position + 1:
                # A no-op at its place, exactly as a rebuild will read it.
                await model.apply([voided_event(record)])
                entry["stepped_over"].append(letter.dlq_seq)
            else:
                entry["dropped"].append(letter.dlq_seq)
            await p.dead_letters.delete(letter.dlq_seq)
        report.models[f"{name} v{version}"] = entry
    # Then each version's other letters of the aggregate (behind the voided one), once
    # every version's letter of the voided sequence is gone: a retry by model name alone
    # took another version's letter of it as "still undecodable", under this version.
    for key in sorted({(d.model, d.version) for d in letters}):
        name, version = key
        entry = report.models[f"{name} v{version}"]
        retried = await admin.dlq_retry(p, name, aggregate_id, version=version)
        entry["retried"] = retried.done
        entry["failed"] = retried.failed
    if record is not None:
        # Models that took the voided message as a valid event: what they wrote from
        # it is written again from the stream without it (stream readers step over it).
        # Every version that holds data or is being built, active or not: one left
        # out would serve the voided event again after a cutover to it.
        filed = {(d.model, d.version) for d in letters if d.original_seq == seq}
        deadline = asyncio.get_running_loop().time() + caught_up_s
        for name in sorted(mine):
            for version in await _versions_to_replay(p, name, record, filed):
                entry = await _replay_without(p, name, version, aggregate_id, record, deadline)
                earlier = report.models.setdefault(f"{name} v{version}", {"failed": {}})
                earlier["failed"].update(entry.pop("failed"))
                earlier.update(entry)
    return report


async def plan_void(p: Projection, seq: int, domain: str | None = None) -> VoidReport:
    """What :func:`void_sequence` would do, writing nothing (``repair void --dry-run``):
    the same domain choice and refusals, the aggregate, whether it is voided already,
    and per model version the dead letters it would drop or step over (``dropped``,
    ``stepped_over``), the ones behind it it would apply again (``retried``: their
    dead-letter sequences; whether they then apply is known only by doing it), and
    the models that applied it as a valid event and would be replayed without it
    (``would_replay``)."""
    domain = await _domain_of(p, seq, domain)
    store = p.domain_store(domain)
    mine = {m for m in p.domains.models() if p.domains.owner(m).name == domain}
    await _refuse_no_aggregate(p, store, sorted(mine), seq)
    await store.start()
    raw = await jsapi.direct_get(
        store._replies, store.settings.stream, {"seq": seq}, store.settings.request_timeout_s
    )
    prefix = store.settings.subject_prefix + "."
    if raw is None or not raw.subject.startswith(prefix):  # as store.void refuses it
        raise ValidationError(
            f"stream sequence {seq} of {store.settings.stream} holds no event "
            f"(nothing stored there, or not under {prefix}>)",
            field="seq",
        )
    aggregate_id = raw.subject[len(prefix) :].split(".", 1)[0]
    before = await store.voided(aggregate_id, seq)
    report = VoidReport(seq, aggregate_id, before, domain, store.settings.stream, dry_run=True)
    letters = [
        d
        for m in sorted(mine)
        for d in await p.dead_letters.of_aggregate(m, aggregate_id)
        if d.aggregate_id == aggregate_id
    ]
    record = await _record_at(store, seq)
    for name, version in sorted({(d.model, d.version) for d in letters}):
        model = p.model(name, version)
        entry: dict[str, Any] = {"dropped": [], "stepped_over": [], "retried": [], "failed": None}
        for letter in [d for d in letters if (d.model, d.version) == (name, version)]:
            if letter.original_seq != seq:
                entry["retried"].append(letter.dlq_seq)
            elif record is not None and record.version == await model.position(aggregate_id) + 1:
                entry["stepped_over"].append(letter.dlq_seq)
            else:
                entry["dropped"].append(letter.dlq_seq)
        report.models[f"{name} v{version}"] = entry
    if record is not None:
        filed = {(d.model, d.version) for d in letters if d.original_seq == seq}
        for name in sorted(mine):
            for version in await _versions_to_replay(p, name, record, filed):
                entry = report.models.setdefault(f"{name} v{version}", {"failed": None})
                entry["would_replay"] = True
    return report


async def _versions_to_replay(
    p: Projection, name: str, record: RecordedEvent, filed: set[tuple[str, int]]
) -> list[int]:
    """The versions of model ``name`` a void of ``record`` replays without it (the void
    and its dry run alike): none when the model has no control entry or does not
    consume the event's type; else its pinned version, or every version that holds
    data or is being built (LIVE, BUILDING), less those that filed the voided event
    as a dead letter (``filed``: (model, version) pairs). Each model's own entry is
    read: a listing of the bucket (an ordered consumer) can miss entries under load
    and said "no model" for one that had one."""
    control = await p.control.get(name)
    if control is None or not _consumes(p, name, record.event_type):
        return []
    pinned = p.pinned_version(name)
    versions = (
        [pinned]
        if pinned is not None
        else sorted(v for v, s in control.versions.items() if s in (LIVE, BUILDING))
    )
    return [v for v in versions if (name, v) not in filed]


async def _refuse_no_aggregate(
    p: Projection, store: JetStreamEventStore, models: list[str], seq: int
) -> None:
    """ValidationError naming ``seq`` when its message's subject names no aggregate
    (``<prefix>.x.y.Type``, ``<prefix>.a%b.Type``): no reader applies it, every model
    dead-letters it (090f134), so there is no story to void it in. A void of it
    recorded a void of aggregate ``x`` (``a%b``; an invalid-id error for an id of 2,000
    characters) and reported success while the letters stayed: the refusal names the
    `projector dlq discard` that clears them."""
    raw = await jsapi.direct_get(
        store._replies, store.settings.stream, {"seq": seq}, store.settings.request_timeout_s
    )
    prefix = store.settings.subject_prefix
    if raw is None or not raw.subject.startswith(prefix + "."):
        return  # the void says it holds no event
    try:
        store._subject_tokens(raw)
        return
    except PayloadDecodeError as exc:
        why = str(exc).split(": ", 1)[-1]  # "its subject '...' is not <prefix>..."
    # Filed under '_' (a subject naming no aggregate), or under its first token's
    # (as filed before: a%b under a_b).
    token = raw.subject[len(prefix) + 1 :].split(".")[0] or "_"
    stories = sorted({aggregate_of(raw.subject, prefix), token})
    letters: list[int] = []
    for model in models:
        for story in stories:
            found = await p.dead_letters.of_aggregate(model, story)
            letters += [d.dlq_seq for d in found if d.original_seq == seq]
    letters.sort()
    if letters:
        clear = "jetsource projector dlq discard " + " ".join(f"--seq {s}" for s in letters)
        then = f"clear its dead letters with `{clear} --yes`"
    else:
        then = (
            "no model has dead-lettered it yet; when one has, `jetsource projector dlq "
            f"list` shows its letters (original sequence {seq}) for `jetsource projector "
            "dlq discard --seq <dead-letter seq> --yes`"
        )
    raise ValidationError(
        f"stream sequence {seq} of {store.settings.stream} names no aggregate: {why}; it "
        "is no event of any story, no reader applies it (every model dead-letters it), "
        f"so there is nothing to void: {then}",
        field="seq",
    )


async def _domain_of(p: Projection, seq: int, domain: str | None) -> str:
    """The domain whose stream ``seq`` is meant in: the one named; the projection's
    only one; the one whose models filed ``seq`` as a dead letter; the one whose
    stream voided it already; the one whose stream holds an event there. Refused,
    naming ``domain``, when that leaves several (sequences of two streams coincide)."""
    if domain is not None:
        p.domain_store(domain)  # an unknown name is refused, naming the known ones
        return domain
    if len(p.stores) == 1:
        return next(iter(p.stores))
    held: list[str] = []
    filed: list[str] = []
    voided: list[str] = []
    for name, store in p.stores.items():
        try:
            await store.start()
            raw = await jsapi.direct_get(
                store._replies,
                store.settings.stream,
                {"seq": seq},
                store.settings.request_timeout_s,
            )
        except (NoRespondersError, jsapi.JsApiError):
            continue  # this domain's stream does not exist (here): it holds nothing
        if raw is not None and raw.subject.startswith(store.settings.subject_prefix + "."):
            aggregate_id = raw.subject[len(store.settings.subject_prefix) + 1 :].split(".")[0]
            if await store.voided(aggregate_id, seq):
                voided.append(name)
            held.append(name)
            # Did this domain's models file it? Its story's letters alone, as a void
            # with --domain reads them (every dead letter of the stream was read,
            # payloads and all, to find the ones of this sequence); a subject naming
            # no story plainly is filed under the projector's token for it.
            stories = {aggregate_id, aggregate_of(raw.subject, store.settings.subject_prefix)}
            if await _filed(p, name, sorted(stories), seq):
                filed.append(name)
    if len(filed) == 1:
        return filed[0]
    if voided:
        return voided[0]  # voided before: the void says so and changes nothing
    streams = ", ".join(f"{name} ({s.settings.stream})" for name, s in p.stores.items())
    if not held:
        raise ValidationError(
            f"stream sequence {seq} holds no event in any domain's stream ({streams})",
            field="seq",
        )
    if len(held) == 1 and not filed:
        return held[0]
    raise ValidationError(
        f"stream sequence {seq} holds an event in {len(held)} domains' streams "
        f"({', '.join(held)}): name the one to void with its domain: one of {streams}",
        field="domain",
    )


async def _filed(p: Projection, domain: str, stories: list[str], seq: int) -> bool:
    """Has a model of ``domain`` filed ``seq`` as a dead letter of one of ``stories``?"""
    for model in sorted(m for m in p.domains.models() if p.domains.owner(m).name == domain):
        for story in stories:
            letters = await p.dead_letters.of_aggregate(model, story)
            if any(d.original_seq == seq and d.model == model for d in letters):
                return True
    return False


def _consumes(p: Projection, name: str, event_type: str) -> bool:
    types = p.spec(name, 1).consumed_events
    return types is None or event_type in types


async def _replay_without(
    p: Projection,
    name: str,
    version: int,
    aggregate_id: str,
    record: RecordedEvent,
    deadline: float,
) -> dict[str, Any]:
    """Replay ``aggregate_id`` in ``name`` once its projector is past the voided
    ``record`` (so it is not applied after the replay); a projector not past it by
    ``deadline`` (loop time: stopped, or far behind) steps over it when it comes: it
    knows every void when it starts, and hears each new one. A snapshots model keeps
    no fold to write again: its snapshots from the voided version on are deleted
    (readers fold from the one before; the snapshotter takes new ones)."""
    seq = record.stream_seq
    entry: dict[str, Any] = {"replayed": False, "failed": {}}
    model = p.model(name, version)
    loop = asyncio.get_running_loop()
    while (await model.checkpoint()).seq < seq:
        if loop.time() >= deadline:
            entry["not_yet_applied"] = True
            return entry
        await asyncio.sleep(0.1)
    if isinstance(model, SnapshotModel):
        await model.rewind(aggregate_id, record.version - 1)
        entry["replayed"] = True
        return entry
    try:
        replayed = await admin.replay(p, name, aggregate_id=aggregate_id, version=version)
    except AdminError as exc:  # e.g. the voided message was the aggregate's only one
        entry["failed"] = {seq: str(exc)}
        return entry
    entry["replayed"] = not replayed.failed
    entry["failed"] = replayed.failed
    return entry


async def _record_at(store: JetStreamEventStore, seq: int) -> RecordedEvent | None:
    """The message at ``seq`` as an event, if it decodes at all."""
    raw = await jsapi.direct_get(
        store._replies, store.settings.stream, {"seq": seq}, store.settings.request_timeout_s
    )
    if raw is None:
        return None
    try:
        return await store.open(raw)
    except (PayloadDecodeError, CorruptEventError):
        return None
