"""Ingest adapters: runtime events -> canonical events, with a durable position.

An adapter ``normalize``s one raw item into canonical events, each with an explicit
causation and an id derived from the item's place in its source (so reading the same
item again is a duplicate, never a double), and says where the next item starts
(``position``). The driver records a batch, *then* saves the position: a crash in
between re-reads what was recorded and the ids make it a no-op. Adapters share no
mutable state; what one needs to resume is in its position.

The JSONL adapter reads one canonical event per line (JSON object, proto3 JSON
names, unknown fields refused). Event id: the line's own ``event_id``, else
``jl-<source id>-<byte offset>``. Causation: the line's own ``causation_id``, else the
previous event of the same process in the file (a ``process_started`` with a parent:
the parent's latest event, whatever came before it; a process's first line naming a
parent: the parent's latest too).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.errors import ValidationError
from jetsource.domains.process.validation import FIXED_LIMITS, parse_json_event, to_new_event

MAX_LINE_BYTES = 4 * 1024 * 1024
# Latest event id per process kept for causation (and saved with the position).
MAX_REMEMBERED = 10_000


class Adapter(Protocol):
    def normalize(self, raw: Any) -> list[CanonicalEvent]:
        """Canonical events of one raw item, with explicit causation."""

    @property
    def position(self) -> dict[str, Any]:
        """Everything a restart needs to resume after the last normalized item."""


class PositionFile:
    """An adapter's position as a JSON file, replaced atomically (write, fsync,
    rename, fsync the directory): after a crash it is the old one or the new one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        if not isinstance(doc, dict):
            raise ValidationError(
                f"the position file holds JSON {json.dumps(doc)[:40]}, not an object: "
                "give another --state file",
                "state",
            )
        return doc

    def save(self, position: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(position, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def source_id(path: Path) -> str:
    """A file's identity for derived ids: its resolved path (a moved file is a new
    source unless ``--source-id`` names the old identity)."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


@dataclass
class Line:
    offset: int  # byte offset of the line's start
    end: int  # byte offset after its newline
    number: int  # 1-based
    text: bytes


@dataclass
class JsonlAdapter:
    source: str  # the source id in derived event ids
    default_source: str = ""  # the canonical ``source`` when a line has none
    offset: int = 0
    line_number: int = 0
    last: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # The last recorded line: where it starts and a digest of its bytes (None: not
    # known, a position saved before this was kept). A file replaced at the same path
    # is found by it, not only one shorter than the offset: resuming a longer new file
    # at the old offset skipped its first lines, and a new --state took its lines for
    # the old file's (the same derived ids: answered as duplicates, recorded never).
    tail: tuple[int, str] | None = None

    @classmethod
    def resume(
        cls, source: str, position: dict[str, Any] | None, default_source: str
    ) -> JsonlAdapter:
        if position is None:
            return cls(source, default_source)
        if position.get("source") != source:
            raise ValidationError(
                f"the position file belongs to source {position.get('source')!r}, not "
                f"{source!r}: give --source-id or another --state file",
                "state",
            )
        # Checked whole (a hand-edited or damaged file): a null offset or a list of
        # "last" events was an INTERNAL TypeError, an offset of 1e400 an OverflowError,
        # a negative one a bare "Invalid argument", ``true`` read from byte 1.
        counts = {}
        for key in ("offset", "line"):
            value = position.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValidationError(
                    f"the position file's {key} is {json.dumps(value)[:40]}, not a whole "
                    "number >= 0: give another --state file",
                    "state",
                )
            counts[key] = value
        last = position.get("last", {})
        if not isinstance(last, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in last.items()
        ):
            raise ValidationError(
                "the position file's last is not an object of process ids to event ids: "
                "give another --state file",
                "state",
            )
        tail = position.get("tail")
        if tail is not None and not (
            isinstance(tail, list)
            and len(tail) == 2
            and isinstance(tail[0], int)
            and not isinstance(tail[0], bool)
            and 0 <= tail[0] < counts["offset"]
            and isinstance(tail[1], str)
        ):
            raise ValidationError(
                "the position file's tail is not [offset, digest] of its last line: "
                "give another --state file",
                "state",
            )
        return cls(
            source,
            default_source,
            counts["offset"],
            counts["line"],
            OrderedDict(last),
            (tail[0], tail[1]) if tail is not None else None,
        )

    @property
    def position(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "offset": self.offset,
            "line": self.line_number,
            "last": dict(self.last),
            **({"tail": list(self.tail)} if self.tail is not None else {}),
        }

    def replaced(self, f: Any) -> bool:
        """Whether ``f`` (binary) no longer holds the last recorded line where it was:
        shorter than the offset, or other bytes there (a file replaced or rewritten)."""
        if os.fstat(f.fileno()).st_size < self.offset:
            return True
        if self.tail is None:
            return False
        at, digest = self.tail
        f.seek(at)
        return _digest(f.read(self.offset - at)) != digest

    def lines(self, f: Any, follow_partial: bool) -> Iterator[Line]:
        """Complete lines from the current offset (``f`` is a binary file). A last
        line without its newline is held back while ``follow_partial`` (it is still
        being written), else read as it is."""
        f.seek(self.offset)
        offset, number = self.offset, self.line_number
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if not raw.endswith(b"\n") and len(raw) <= MAX_LINE_BYTES and follow_partial:
                return
            number += 1
            end = offset + len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise ValidationError(
                    f"line {number}: longer than {MAX_LINE_BYTES} bytes", f"line {number}"
                )
            yield Line(offset, end, number, raw)
            offset = end

    def normalize(self, raw: Line) -> list[CanonicalEvent]:
        text = raw.text.strip()
        if not text:
            return []
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValidationError(
                f"line {raw.number}: not JSON: {exc}", f"line {raw.number}"
            ) from None
        except RecursionError:
            # Nested past the parser's recursion limit: not a ValueError (an INTERNAL).
            raise ValidationError(
                f"line {raw.number}: not JSON this command reads: nested too deep",
                f"line {raw.number}",
            ) from None
        event = parse_json_event(obj, f"line {raw.number}")
        if not event.event_id:
            event.event_id = f"jl-{self.source}-{raw.offset}"
        if not event.source and self.default_source:
            event.source = self.default_source
        if not event.causation_id:
            # A process_started with a parent is caused by the parent's latest event
            # (as the SDK's process() does), also when its process has lines before
            # it; any other line by its process's previous one, else (a process's
            # first line naming a parent) by the parent's latest.
            own = self.last.get(event.process_id, "")
            parents = self.last.get(event.parent_process_id, "") if event.parent_process_id else ""
            if event.event_type == "process_started":
                event.causation_id = parents or own
            else:
                event.causation_id = own or parents
        # What the observer would refuse by its fixed rules (a kind that is not text,
        # a control character, ...) is refused here naming the line, not as
        # ``events[i]`` of a batch the user never sees.
        to_new_event(event, FIXED_LIMITS, f"line {raw.number}")
        self.last[event.process_id] = event.event_id
        self.last.move_to_end(event.process_id)
        while len(self.last) > MAX_REMEMBERED:
            self.last.popitem(last=False)
        return [event]

    def advance(self, line: Line) -> None:
        """After the events of every line up to ``line`` are recorded: the position to
        save (a driver normalizes a batch, records it, then advances and saves)."""
        self.offset, self.line_number = line.end, line.number
        self.tail = (line.offset, _digest(line.text))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]
