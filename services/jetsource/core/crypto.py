"""Personal data sealed per data subject (erasure by crypto-shredding).

A payload field marked ``[(jetsource.eventstore.v1.personal) = true]`` in the proto,
and the envelope metadata entries named in :data:`PERSONAL_METADATA`, hold a person's
identifier: that value *is* the field's data subject. Before an event is stored, each
subject's personal values are cut out of the payload and metadata and put into an
AES-256-GCM box under the subject's data key
(:class:`jetsource._gen.eventstore.v1.envelope_pb2.SealedFields`). The box names its key
by a keyed hash of the subject (``key_ref``), never by the subject itself, and lists the
field numbers and metadata keys it holds (every value in it is the subject itself,
so the subject is encrypted once: the box is its ciphertext and tag).

Readers open the boxes whose keys exist and concatenate their payload bytes to the
stored payload (protobuf merges concatenated messages) *before* upcasting, so a sealed
event of an old schema version is lifted like any other. A box whose key was destroyed
(``jetsource erase``) or does not open reads :data:`ERASED` in each of its fields and
entries; nothing else of the event changes. Events stored before erasure existed have no
boxes and read as they always did.

Pure functions only: the keys come from a key store (``jetsource.eventstore.keys``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from operator import attrgetter
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from jetsource._gen.eventstore.v1 import options_pb2
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope, SealedFields

ERASED = "<erased>"
# Envelope metadata entries that name a person (the command's actor).
PERSONAL_METADATA = frozenset({"actor"})
KEY_BYTES = 32  # AES-256
REF_BYTES = 12  # 96 bits: no two subjects of a store share a reference
# One fixed nonce: a subject's key only ever encrypts one message, the subject's value
# with its reference as associated data, so every box under a key is the same bytes
# (which the stream's compression then stores about once per block). GCM's nonce rule
# forbids two *different* messages under one key and nonce; there are none.
_NONCE = bytes(12)
_AAD = b"jetsource.sealed.v1|"


class PersonalFieldError(ValueError):
    """A field marked personal that cannot be sealed (not a singular string)."""


@cache
def personal_fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The fields of a message type marked personal, checked: singular strings only
    (the value names the subject, so it must be one string)."""
    out = []
    for f in descriptor.fields:
        if not f.GetOptions().Extensions[options_pb2.personal]:
            continue
        if f.type != FieldDescriptor.TYPE_STRING or f.is_repeated:
            raise PersonalFieldError(
                f"{descriptor.full_name}.{f.name} is marked personal but is not a singular "
                "string: the value of a personal field names its data subject"
            )
        out.append(f)
    return tuple(out)


@lru_cache(maxsize=4096)
def subject_ref(pepper: bytes, subject: str) -> bytes:
    """The key reference of a subject: HMAC-SHA256 under the key store's secret pepper,
    so a stored reference does not reveal (or let one guess-and-check) the subject.
    Memoized (the same few subjects sign most events; the cache is emptied on every
    erasure this process hears of, :func:`note_erasure`)."""
    return hmac.new(pepper, subject.encode("utf-8"), hashlib.sha256).digest()[:REF_BYTES]


@lru_cache(maxsize=4096)
def _box(key: bytes, ref: bytes, subject: str) -> bytes:
    """A subject's box: deterministic (one key only ever encrypts its subject's own
    value, under the fixed nonce), so every event of the subject carries the same bytes
    and the encryption is done once per key, not once per event."""
    return AESGCM(key).encrypt(_NONCE, subject.encode("utf-8"), _AAD + ref)


class Sealed(NamedTuple):
    """An event with its personal values cut out and boxed.

    ``wire`` is the envelope's ``sealed`` entries as protobuf wire bytes: appended to a
    serialized envelope they parse as its ``sealed`` field (a message's fields may come
    in any order on the wire), so the append path serializes each box once per process,
    not once per event. ``metadata`` is the event's own mapping when none of its
    entries is personal (not a copy). A named tuple: one is made per sealed event, and
    a frozen dataclass costs several times as much to build."""

    payload: bytes
    metadata: Mapping[str, str]
    wire: bytes

    @property
    def sealed(self) -> list[SealedFields]:
        envelope = EventEnvelope()
        envelope.ParseFromString(self.wire)
        return list(envelope.sealed)


def _string_field(number: int, value: str) -> bytes:
    """The wire bytes of one string field (tag, length, UTF-8)."""
    return _bytes_field(number, value.encode("utf-8"))


def _bytes_field(number: int, data: bytes) -> bytes:
    """The wire bytes of one length-delimited field (tag, length, bytes)."""
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_SEALED_FIELD = EventEnvelope.DESCRIPTOR.fields_by_name["sealed"].number


@lru_cache(maxsize=4096)
def _entry(
    key: bytes, ref: bytes, subject: str, numbers: tuple[int, ...], entries: tuple[str, ...]
) -> bytes:
    """One subject's ``sealed`` entry of an envelope, as wire bytes (memoized: the same
    few subjects in the same few fields sign most events)."""
    box = SealedFields(key_ref=ref, fields=numbers, metadata=entries, box=_box(key, ref, subject))
    return _bytes_field(_SEALED_FIELD, box.SerializeToString(deterministic=True))


RefKey = tuple[bytes, bytes]  # a subject's (key reference, data key)


class Cut:
    """What sealing takes out of an event whose personal fields and entries hold given
    values: the subjects (distinct, in a stable order: fields in the proto's order,
    then metadata entries by name), per subject the field numbers and metadata keys
    holding it, and the field names and entries to take out. It depends on nothing
    but those values, so :func:`cut_of` makes it once per values (until an erasure is
    heard of), and it keeps the ``sealed`` wire bytes of the last keys it was given:
    the append path's work per event is then one copy of the message without its
    personal fields."""

    __slots__ = ("_memo", "entries", "fields", "groups", "subjects")

    def __init__(
        self,
        subjects: tuple[str, ...],
        groups: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...],
        fields: tuple[str, ...],
        entries: tuple[str, ...],
    ) -> None:
        self.subjects = subjects
        self.groups = groups
        self.fields = fields
        self.entries = entries
        # (refkeys, wire): one attribute, so a reader never sees one without the other.
        self._memo: tuple[tuple[RefKey, ...], bytes] | None = None

    def wire(self, refkeys: tuple[RefKey, ...]) -> bytes:
        """The envelope's ``sealed`` entries, one per subject, under ``refkeys``
        (``subjects[i]``'s (ref, key) at ``i``)."""
        memo = self._memo
        if memo is not None and memo[0] == refkeys:
            return memo[1]
        wire = b"".join(
            _entry(key, ref, subject, numbers, entries)
            for subject, (ref, key), (numbers, entries) in zip(
                self.subjects, refkeys, self.groups, strict=True
            )
        )
        self._memo = (refkeys, wire)
        return wire

    def seal(
        self, message: Message, metadata: Mapping[str, str], refkeys: tuple[RefKey, ...]
    ) -> Sealed:
        """``message`` and ``metadata`` (whose personal values are this cut's) sealed
        under ``refkeys``: the payload without the personal fields, the entries left."""
        stripped = type(message)()
        stripped.CopyFrom(message)
        for name in self.fields:
            stripped.ClearField(name)
        rest = metadata
        if self.entries:
            rest = {k: v for k, v in metadata.items() if k not in self.entries}
        cls = type(message)
        plain = _PLAIN.get(cls)
        if plain is None:
            plain = _plain(cls)
        payload = (
            stripped.SerializeToString()
            if plain
            else stripped.SerializeToString(deterministic=True)
        )
        return Sealed(payload, rest, self.wire(refkeys))


# Message class -> whether its plain serialization is its deterministic one.
_PLAIN: dict[type[Message], bool] = {}


def _plain(cls: type[Message]) -> bool:
    """Does ``cls`` serialize to the same bytes with and without ``deterministic``?
    True when neither it nor any message it holds has a map (deterministic output
    orders map entries) or can be extended (and orders extensions). Deterministic
    costs more than the serialization itself (upb parses the keyword argument)."""
    plain = _PLAIN[cls] = not _orders_something(cls.DESCRIPTOR, set())
    return plain


def _orders_something(descriptor: Any, seen: set[str]) -> bool:
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    if descriptor.is_extendable or descriptor.GetOptions().map_entry:
        return True
    return any(
        f.message_type is not None and _orders_something(f.message_type, seen)
        for f in descriptor.fields
    )


# Per message class: its personal fields' values in one call (attrgetter: the value
# itself for one field, a tuple for several; None for no field), names and numbers.
_Plan = tuple[Callable[[Message], Any] | None, tuple[str, ...], tuple[int, ...]]
_PLANS: dict[type[Message], _Plan] = {}
_METADATA_KEYS = tuple(sorted(PERSONAL_METADATA))
# (class, field values, entry values) -> its cut (None: nothing personal). Holds
# subjects: emptied on every erasure heard of, and when full.
_CUTS: dict[tuple[Any, ...], Cut | None] = {}
_CUTS_MAX = 4096


def _plan(cls: type[Message]) -> _Plan:
    fields = personal_fields(cls.DESCRIPTOR)
    names = tuple(f.name for f in fields)
    plan = (attrgetter(*names) if names else None, names, tuple(f.number for f in fields))
    _PLANS[cls] = plan
    return plan


def cut_of(message: Message, metadata: Mapping[str, str]) -> Cut | None:
    """The cut of an event (None when it names no subject: empty values name none).
    Memoized by the personal values themselves: the same few people sign most events."""
    cls = type(message)
    plan = _PLANS.get(cls) or _plan(cls)
    get = plan[0]
    values = None if get is None else get(message)
    meta = tuple(map(metadata.get, _METADATA_KEYS)) if metadata else ()
    key = (cls, values, meta)
    try:
        return _CUTS[key]
    except KeyError:
        pass
    cut = _make_cut(plan, values, meta)
    if len(_CUTS) >= _CUTS_MAX:
        _CUTS.clear()
    _CUTS[key] = cut
    return cut


def _make_cut(plan: _Plan, values: Any, meta: tuple[str | None, ...]) -> Cut | None:
    _, names, numbers = plan
    field_values = (values,) if len(names) == 1 else (values or ())
    groups: dict[str, tuple[list[int], list[str]]] = {}
    fields = []
    for name, number, value in zip(names, numbers, field_values, strict=True):
        if value:
            groups.setdefault(value, ([], []))[0].append(number)
            fields.append(name)
    entries = []
    if meta:
        for k, value in zip(_METADATA_KEYS, meta, strict=True):
            if value:
                groups.setdefault(value, ([], []))[1].append(k)
                entries.append(k)
    if not groups:
        return None
    return Cut(
        tuple(groups),
        tuple((tuple(n), tuple(e)) for n, e in groups.values()),
        tuple(fields),
        tuple(entries),
    )


def subjects_of(message: Message, metadata: Mapping[str, str]) -> list[str]:
    """The data subjects an event names, in a stable order (empty values name none)."""
    cut = cut_of(message, metadata)
    return [] if cut is None else list(cut.subjects)


def seal(
    message: Message,
    metadata: Mapping[str, str],
    keys: Mapping[str, RefKey],
) -> Sealed:
    """Cut each subject's personal values out of ``message`` and ``metadata`` and box
    them under that subject's ``(key_ref, key)`` from ``keys`` (subject -> key).

    Every value in one subject's box *is* the subject (a personal field names its
    subject), so the box encrypts that one string once and lists, in the clear, the
    field numbers and metadata keys that hold it."""
    cut = cut_of(message, metadata)
    if cut is None:
        return Sealed(message.SerializeToString(deterministic=True), dict(metadata), b"")
    return cut.seal(message, metadata, tuple(keys[s] for s in cut.subjects))


KeyLookup = Callable[[bytes], bytes | None]


def unseal(envelope: EventEnvelope, key_of: KeyLookup) -> tuple[bytes, int]:
    """Put the sealed values back: returns the full payload bytes (stored payload plus
    each box's fields holding its subject, or :data:`ERASED` for a box whose key is
    gone or does not open it) and fills ``envelope.metadata`` likewise. ``key_of(ref)``
    is the key, or None when it was destroyed. Returns (payload, boxes read erased)."""
    payload = bytearray(envelope.payload)
    erased = 0
    for box in envelope.sealed:
        key = key_of(box.key_ref)
        value = ERASED
        if key is not None:
            try:
                value = AESGCM(key).decrypt(_NONCE, box.box, _AAD + box.key_ref).decode("utf-8")
            except (InvalidTag, ValueError):
                value = ERASED  # another key under the same reference: this one is gone
        if value == ERASED:
            erased += 1
        for number in box.fields:
            payload += _string_field(number, value)
        for k in box.metadata:
            envelope.metadata[k] = value
    return bytes(payload), erased


_erasures = 0  # erasures this process has heard of (key stores note them)


def erasures_heard() -> int:
    """How many erasures this process has heard of: a value computed from states read
    before the count moved may hold opened values that now read "<erased>"."""
    return _erasures


def note_erasure() -> None:
    global _erasures
    _erasures += 1
    # No subject's value is kept in memory past an erasure heard of.
    subject_ref.cache_clear()
    _box.cache_clear()
    _entry.cache_clear()
    _CUTS.clear()


class ErasureWatch:
    """For a cache of states folded from events: ``moved()`` is true once after each
    erasure heard of since the last call, and the cache then drops what it holds (a
    state folded before an erasure may hold values that now read "<erased>")."""

    def __init__(self) -> None:
        self._seen = _erasures

    def moved(self) -> bool:
        if self._seen == _erasures:
            return False
        self._seen = _erasures
        return True


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)
