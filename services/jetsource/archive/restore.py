"""Disaster recovery: a stream rebuilt from its archive and its live tail into a new
stream, every message with its original sequence, subject (moved to a new prefix
when asked), headers and bytes.

The archive and the live stream (when it still answers) together hold every
message: compaction purges only what a verified segment holds. They are merged by
sequence; the new stream is created with the first sequence, written in order, and
a sequence held by neither (a message deleted by an operator) is taken by a filler
that is deleted at once, so every later message keeps its number. The new stream
then gets the source's protections (deny delete, deny purge per its policy).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jetsource.archive.segment import ArchivedMessage
from jetsource.archive.store import Archive
from jetsource.core.errors import JetsourceError
from jetsource.eventstore import horizon as horizons
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import H_RECORDED_AT
from jetsource.eventstore.jsapi import Replies

# Checks made when a message was first written; made again they would refuse it.
_SKIP_ON_RESTORE = ("Nats-Expected-", "Nats-Batch-", "Nats-Required-Api-Level")
_SERVER_CONFIG = {"created", "metadata", "sealed", "first_seq"}
GAP_TOKEN = "_restore_gap"
_AFTER = "Nats-Expected-Last-Sequence"


class RestoreError(JetsourceError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# In the new stream's metadata while it is written ("<source> running <options>"): a
# restore stopped midway (Ctrl-C, NATS lost) goes on when run again with the same
# options, instead of refusing the stream it left half written. The final
# configuration, set at the end, drops it.
RESTORE_MARK = "jetsource_archive_restore"


# Kept in the finished stream's metadata ("<source> <first>..<last> <options>"): the same
# restore run again (after it, or beside it) says it was restored already and changes
# nothing; it was refused "exists and holds messages", or, run at once, "a duplicate
# message id". <options> (JSON) are those that change what is written (--subject-prefix,
# --retention, --max-age-s): a run with others is refused naming the option, where it
# said "restored already, nothing changed" of a stream that holds other subjects. A mark
# without them (written before they were kept) is taken as the same restore.
RESTORED_MARK = "jetsource_archive_restored"


def restore_options(
    prefixes: dict[str, str], retention: str | None, max_age_s: float
) -> dict[str, Any]:
    """What of a restore's options changes what it writes: the subjects' prefixes, the
    retention asked (None: the source's) and, for ``age``, the max age (the stream's
    max_age; age+compaction writes none)."""
    options: dict[str, Any] = {"subject_prefix": dict(prefixes), "retention": retention}
    if retention == "age":
        options["max_age_s"] = float(max_age_s)
    return options


def _said(option: str, value: Any) -> str:
    if option == "subject_prefix":
        given = " ".join(f"--subject-prefix {old}={new}" for old, new in (value or {}).items())
        return given or "no --subject-prefix (the source's subjects)"
    if option == "retention":
        return f"--retention {value}" if value else "no --retention (the source's)"
    return f"--max-age-s {value:g}" if value is not None else "no --max-age-s"


def _differing(held: dict[str, Any] | None, given: dict[str, Any]) -> tuple[str, str, str] | None:
    """The first option ``given`` sets otherwise than the mark ``held``: (the option,
    as held, as given); None when they agree or the mark holds none."""
    if held is None:
        return None
    for option in ("subject_prefix", "retention", "max_age_s"):
        if held.get(option) != given.get(option):
            flag = "--" + option.replace("_", "-")
            return flag, _said(option, held.get(option)), _said(option, given.get(option))
    return None


def _options_in(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        options = json.loads(text)
    except ValueError:
        return None
    return options if isinstance(options, dict) else None


def _running_mark(info: dict[str, Any] | None, source: str) -> tuple[bool, dict[str, Any] | None]:
    """Whether a stopped restore of ``source`` left the stream, and its options (None:
    a mark without them)."""
    if info is None:
        return False, None
    mark = str((info["config"].get("metadata") or {}).get(RESTORE_MARK, ""))
    name, _, rest = mark.partition(" ")
    state, _, options = rest.partition(" ")
    if name != source or state != "running":
        return False, None
    return True, _options_in(options)


def _restored_mark(
    info: dict[str, Any] | None, source: str
) -> tuple[tuple[int, int], dict[str, Any] | None] | None:
    """The sequences a finished restore of ``source`` wrote into the stream and the
    options it was run with (None: it is not one)."""
    if info is None:
        return None
    mark = str((info["config"].get("metadata") or {}).get(RESTORED_MARK, ""))
    name, _, rest = mark.partition(" ")
    span, _, options = rest.partition(" ")
    first, _, last = span.partition("..")
    if name != source or not first.isdigit() or not last.isdigit():
        return None
    return (int(first), int(last)), _options_in(options)


def _same_as_started(
    source: str, target: str, started: dict[str, Any] | None, given: dict[str, Any]
) -> None:
    """A stopped restore goes on only with the options it was started with (another
    --subject-prefix would write other subjects after its own)."""
    if (differs := _differing(started, given)) is not None:
        flag, was, now = differs
        raise RestoreError(
            f"stream {target} is partly restored from {source} with {was}; this run gives "
            f"{now}: nothing was written. Run it with the options it was started with to "
            "finish it, or restore into a new stream",
            flag,
        )


class RestoreBusy(RestoreError):
    """Another restore of the same source writes the stream at the same time."""


@dataclass
class RestoreReport:
    source: str
    target: str
    from_archive: int
    from_live: int
    gaps: int
    first_seq: int
    last_seq: int
    already_restored: bool = False  # a finished restore had written it: nothing changed


def _already(
    source: str,
    target: str,
    mark: tuple[tuple[int, int], dict[str, Any] | None],
    given: dict[str, Any],
) -> RestoreReport:
    """The same restore finished already: nothing to do. One run with other options
    (another --subject-prefix: other subjects; another retention) is refused naming
    the option and what the stream holds: it would have written another stream."""
    span, held = mark
    if (differs := _differing(held, given)) is not None:
        flag, was, now = differs
        raise RestoreError(
            f"stream {target} was restored from {source} with {was} (sequences "
            f"{span[0]}..{span[1]}); this run gives {now}: nothing was written. Run it "
            f"with the options it was restored with, or restore into a new stream",
            flag,
        )
    return RestoreReport(source, target, 0, 0, 0, span[0], span[1], already_restored=True)


def _json(options: dict[str, Any]) -> str:
    return json.dumps(options, separators=(",", ":"), sort_keys=True)


def rewrite(subject: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if subject == old or subject.startswith(old + "."):
            return new + subject[len(old) :]
    return subject


async def _live_messages(replies: Replies, stream: str, timeout: float) -> list[ArchivedMessage]:
    from jetsource.archive.archiver import to_archived

    out: list[ArchivedMessage] = []
    seq = 1
    while True:
        try:
            page = await jsapi.direct_get_page(
                replies, stream, None, seq, jsapi.DIRECT_GET_PAGE, timeout
            )
        except jsapi.NoRespondersError:
            return out  # the source is gone: the archive is all there is
        out.extend(to_archived(raw) for raw in page.messages)
        if page.pending == 0 or not page.messages:
            return out
        seq = page.messages[-1].seq + 1


async def _info(replies: Replies, stream: str, timeout: float) -> dict[str, Any] | None:
    try:
        return await jsapi.api(replies, f"STREAM.INFO.{stream}", {}, timeout)
    except jsapi.NoRespondersError:
        return None
    except jsapi.JsApiError as exc:
        if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
            return None
        raise


async def restore(
    replies: Replies,
    archive: Archive,
    source_config: dict[str, Any],
    target: str,
    prefixes: dict[str, str],
    timeout: float,
    progress: Callable[[int, int], None] = lambda done, total: None,
    retention: str | None = None,
    max_age_s: float = 0.0,
) -> RestoreReport:
    """Write archive + live tail of ``archive.stream`` into the new stream ``target``.
    ``source_config`` is the source's stream configuration (its info, or as
    configured when the source is gone). ``retention`` gives the new stream another
    policy than the source's (``forever``, ``age``, ``age+compaction``): the way to
    turn compaction on for a stream created keep-forever, whose purge can never be
    allowed again."""
    source = archive.stream
    given = restore_options(prefixes, retention, max_age_s)
    existing = await _info(replies, target, timeout)
    if (finished := _restored_mark(existing, source)) is not None:
        return _already(source, target, finished, given)  # run again: nothing to do
    resuming, started = _running_mark(existing, source)
    if resuming:
        _same_as_started(source, target, started, given)
    if existing is not None and not resuming and int(existing["state"].get("messages", 0)) > 0:
        raise RestoreError(f"stream {target} exists and holds messages: restore into a new one")
    merged: dict[int, ArchivedMessage] = {m.seq: m for m in await archive.messages()}
    # What compaction purged must be in this archive, or the new stream would lack it
    # (written with gaps, exit 0: an archive URL other than the one compaction wrote to).
    missing = archive.unlisted(
        await archive.entries(), await horizons.read_all(replies, source, timeout)
    )
    if missing:
        raise RestoreError(
            f"{len(missing)} archive segments holding purged events of {source} are not "
            f"in the archive at {archive.objects.location}: " + "; ".join(missing.values()),
            "JETSOURCE_ARCHIVE__URL",
        )
    live = await _live_messages(replies, source, timeout) if source != target else []
    for m in live:
        merged[m.seq] = m
    # Those only the archive holds (each message counted once: both counted the
    # sequences the archive and the live stream share, more than were restored).
    archived = len(merged) - len(live)
    if not merged:
        raise RestoreError(f"nothing to restore: no archived or live message of {source}")
    seqs = sorted(merged)
    first, last = seqs[0], seqs[-1]
    subjects = [rewrite(s, prefixes) for s in source_config.get("subjects", [])]
    gap_subject = None
    if len(seqs) != last - first + 1:
        # A subject inside the new stream's own subjects that no reader reads.
        root = subjects[0].removesuffix(".>")
        gap_subject = f"{root}.{GAP_TOKEN}.{GAP_TOKEN}"
    config = {k: v for k, v in source_config.items() if k not in _SERVER_CONFIG}
    final = dict(config, name=target, subjects=subjects)
    final["metadata"] = {
        **{k: v for k, v in (final.get("metadata") or {}).items() if k != RESTORE_MARK},
        RESTORED_MARK: f"{source} {first}..{last} {_json(given)}",
    }
    if retention is not None:
        if retention not in ("forever", "age", "age+compaction"):
            raise RestoreError(f"retention {retention!r}: forever, age or age+compaction")
        if retention != "forever" and max_age_s <= 0:
            raise RestoreError(f"retention {retention} needs a max age > 0")
        final["deny_purge"] = retention != "age+compaction"
        final["max_age"] = int(max_age_s * 1_000_000_000) if retention == "age" else 0
    writing = dict(
        final,
        deny_delete=False,
        deny_purge=False,
        metadata={
            **{k: v for k, v in final["metadata"].items() if k != RESTORED_MARK},
            RESTORE_MARK: f"{source} running {_json(given)}",
        },
    )

    async def foreign(seq: int) -> str | None:
        """What ``target`` holds at ``seq`` when it is not this restore's message there
        (its subject and data; a place-holder of a gap is deleted), else None."""
        stored = await jsapi.leader_get(replies, target, {"seq": seq}, timeout)
        m = merged.get(seq)
        if m is None:  # a gap: its place-holder, deleted or not yet
            ok = stored is None or stored.subject == gap_subject
        else:
            ok = stored is not None and (stored.subject, bytes(stored.data)) == (
                rewrite(m.subject, prefixes),
                bytes(m.data),
            )
        if ok:
            return None
        return "nothing" if stored is None else f"a message on {stored.subject}"

    def foreign_error(seq: int, held: str) -> RestoreError:
        return RestoreError(
            f"stream {target} holds {held} at sequence {seq}, not sequence {seq} of "
            f"{source}: something other than this restore writes its subjects "
            f"({', '.join(subjects)}); restore into a new stream (--subject-prefix "
            "OLD=NEW gives it subjects of its own)"
        )

    async def another_run(seq: int) -> RestoreReport:
        """``seq`` was written by someone else. Another restore of this source into
        ``target`` at the same time wrote what this one would have (each message is
        published only onto the sequence before it, so nothing was doubled): finished
        by now, restored already; else it goes on, and this one stops. Any other
        writer is said as such: its message holds a place of the source's."""
        if (held := await foreign(seq)) is not None:
            raise foreign_error(seq, held)
        info = await _info(replies, target, timeout)
        if (finished := _restored_mark(info, source)) is not None:
            return _already(source, target, finished, given)
        raise RestoreBusy(
            f"stream {target} is being restored from {source} by another run at the same "
            f"time (it wrote sequence {seq} first): this one stopped, nothing was written "
            "twice; that run finishes it (the same restore run after it says it is "
            "restored already)"
        )

    expect = first
    if existing is None:
        try:
            await jsapi.create_waiting(
                lambda: jsapi.api(
                    replies, f"STREAM.CREATE.{target}", dict(writing, first_seq=first), timeout
                ),
                target,
                int(writing.get("num_replicas") or 1),
            )
        except jsapi.JsApiError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NAME_IN_USE:
                # Created meanwhile (a restore beside this one, finished already?)
                info = await _info(replies, target, timeout)
                if (finished := _restored_mark(info, source)) is not None:
                    return _already(source, target, finished, given)
                running, started = _running_mark(info, source)
                if running:
                    _same_as_started(source, target, started, given)
                    return await another_run(first)
            if exc.err_code != jsapi.ERR_SUBJECTS_OVERLAP:
                raise
            raise RestoreError(
                f"stream {target}: its subjects {', '.join(subjects)} overlap those of a "
                f"stream on this server ({source}?): a stream restored beside another needs "
                "subjects of its own: give --subject-prefix OLD=NEW for them",
                "--subject-prefix",
            ) from exc
    elif resuming:
        # Stopped midway: a place-holder it had written but not deleted yet goes, and
        # the writing goes on after the last sequence the stream holds.
        if gap_subject is not None:
            await jsapi.api(replies, f"STREAM.PURGE.{target}", {"filter": gap_subject}, timeout)
        held = int(existing["state"].get("last_seq", 0))
        if held and not first - 1 <= held <= last:
            raise RestoreError(
                f"stream {target} was left by a restore of other messages (it ends at "
                f"sequence {held}, outside {first}..{last}): restore into a new one"
            )
        if first <= held and (what := await foreign(held)) is not None:
            raise foreign_error(held, what)
        expect = max(first, held + 1)
    else:
        raise RestoreError(f"stream {target} exists: restore creates a new stream")
    gaps = 0
    progress(0, len(seqs))
    for done, seq in enumerate(seqs, start=1):
        if seq < expect:  # written before the restore stopped
            continue
        while expect < seq:  # a sequence nobody holds: keep the numbering
            assert gap_subject is not None
            try:
                ack = await jsapi.publish(
                    replies, jsapi.OutMessage(gap_subject, b"", {_AFTER: str(expect - 1)}), timeout
                )
            except jsapi.JsApiError as exc:
                if exc.err_code != jsapi.ERR_WRONG_LAST_SEQUENCE:
                    raise
                return await another_run(expect)
            await jsapi.delete_message(replies, target, ack.seq, timeout)
            gaps += 1
            expect += 1
        m = merged[seq]
        headers = {k: v for k, v in m.headers.items() if not k.startswith(_SKIP_ON_RESTORE)}
        headers.setdefault(H_RECORDED_AT, str(m.time_ns))  # the stream stamps it anew
        # Only onto the sequence before it: a restore writing beside this one cannot
        # make a message land twice or at another number.
        headers[_AFTER] = str(seq - 1)
        try:
            ack = await jsapi.publish(
                replies, jsapi.OutMessage(rewrite(m.subject, prefixes), m.data, headers), timeout
            )
        except jsapi.JsApiError as exc:
            if exc.err_code != jsapi.ERR_WRONG_LAST_SEQUENCE:
                raise
            return await another_run(seq)
        if ack.duplicate and ack.seq == seq and ack.stream == target:
            return await another_run(seq)  # the same message, written there by that run
        if ack.stream != target:  # a subject outside the new stream's: never another's
            raise RestoreError(
                f"sequence {seq} of {source} ({m.subject}) went to stream {ack.stream}, "
                f"not {target}: its subject is outside {source}'s subjects"
            )
        if ack.seq != seq or ack.duplicate:
            raise RestoreError(
                f"sequence {seq} of {source} was written as {ack.seq} in {target}"
                + (" (a duplicate message id)" if ack.duplicate else "")
            )
        expect = seq + 1
        if done % 1000 == 0:
            progress(done, len(seqs))
    progress(len(seqs), len(seqs))
    await jsapi.api(replies, f"STREAM.UPDATE.{target}", final, timeout)
    return RestoreReport(source, target, archived, len(live), gaps, first, last)
