"""Characters that must not reach a terminal raw, for every front end (the CLI's
output, the TUI): C0 controls, DEL, C1 controls (0x9b is a one-byte CSI on some
terminals), and the bidi marks, embeddings, overrides and isolates that reorder what
follows them. Each is shown as a visible escape (``\\x1b``, ``\\u202e``)."""

from __future__ import annotations

import re
import unicodedata

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape(ch: str) -> str:
    """The visible form of one unsafe character."""
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# One line of text (an id, a key, a title, a name): no control character (C0, DEL, C1:
# Unicode's category Cc) and neither the line nor the paragraph separator U+2028/U+2029,
# which end a line in a log or a terminal as a newline does (U+0085, NEL, is C1). The
# rule of every one-line input: the process ledger's texts, the context commands'
# one-line values and options, omni's status worker.
NOT_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def refused_at(value: str, at: int) -> str:
    """How a refusal names the character at ``at`` that a rule of this module refused:
    "a control character (U+001B at position 4)", or for U+2028/U+2029, which one line
    refuses and are no control characters, "a line separator (U+2028 at position 4)"
    ("a paragraph separator"), and for a bidi embedding, override or isolate, which an
    id refuses, "a bidi control (U+202E at position 4)"."""
    ch = value[at]
    what = _SEPARATORS.get(ch) or ("a bidi control" if ch in BIDI else "a control character")
    return f"{what} (U+{ord(ch):04X} at position {at})"


_SEPARATORS = {"\u2028": "a line separator", "\u2029": "a paragraph separator"}
# The bidi embeddings and overrides (U+202A..U+202E) and isolates (U+2066..U+2069):
# invisible, they reorder what follows them (:data:`UNSAFE`). The marks (ALM U+061C,
# LRM U+200E, RLM U+200F) are not among them: they occur in right-to-left names.
BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def not_one_line_at(value: str) -> int | None:
    """The position of the first character of ``value`` that one line of text cannot
    hold (:data:`NOT_ONE_LINE`), or None."""
    # Printable ASCII (the usual text) holds none: one C call instead of a search per
    # field of every event.
    if value.isascii() and value.isprintable():
        return None
    found = NOT_ONE_LINE.search(value)
    return None if found is None else found.start()


def not_recorded(value: str, name: str, noun: str) -> str | None:
    """Why no event records ``value`` as its ``noun`` ("an actor", "a subject": a name
    of who did it, matched exactly as a context command recorded it, so held to the
    one-line rule model.one_line holds it to): "<name> holds <what>: no event records
    such <noun> (it takes one line of printable text)" when :func:`not_one_line_at`
    finds a character, else None. ``projector replay --actor`` and ``erase SUBJECT``
    refuse with it; each refuses the empty value itself, in its own words."""
    at = not_one_line_at(value)
    if at is None:
        return None
    return (
        f"{name} holds {refused_at(value, at)}: no event records such {noun} "
        "(it takes one line of printable text)"
    )


# An id a user chooses through our CLI or API where this rule holds (omni's and repair
# void's --actor, omni processing's worker, the process observer's source,
# correlation_id and idempotency_key): one line and no bidi embedding, override or
# isolate (:data:`BIDI`) either. Shown, a U+202E in one reversed what follows it
# ("ops\u202etoor" reads as "opsroot"), and two ids that look alike were two ids. The
# marks U+061C, U+200E, U+200F are kept: they occur in right-to-left names. Texts keep
# all of them (a process's name and kind, titles, bodies; escaped on output). The
# context commands' ids and names of who did it keep the one-line rule (their contract),
# and ids a provider or a business chose (a webhook's button reply id, a Discord
# custom_id, a handle) are the provider's text and keep the one-line rule.
NOT_ID = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
ID_TAKES = "one line of printable text, no bidi embedding, override or isolate"


def not_id_at(value: str) -> int | None:
    """The position of the first character of ``value`` that an id a user chooses
    cannot hold (:data:`NOT_ID`: what one line refuses, and the bidi controls), or
    None."""
    if value.isascii() and value.isprintable():
        return None
    found = NOT_ID.search(value)
    return None if found is None else found.start()


# Text of many lines (a body, a rationale, a reason): tabs and line breaks and nothing
# else of the controls (C0, DEL, C1): a NUL or an ESC (a terminal recoloured, retitled,
# wiped) is no text. A line break is LF, CR LF, or a CR alone or before CR LF (an old
# Mac's or a progress bar's line end, a CR LF through a second CR LF translation): each
# is one line break, stored as LF (:func:`lf_lines`), so that no lone CR overwrites a
# line in a terminal. The line separators U+2028/U+2029 are line breaks like LF here.
# The rule of the context commands' multi-line values, omni's merge reason and status
# reason: each checks with :func:`not_lines_at` and stores :func:`lf_lines`.
LINES_TAKE = "printable text, tabs and line breaks (LF, CR LF or a lone CR; stored as LF)"
NOT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def not_lines_at(value: str) -> int | None:
    """The position of the first character of ``value`` that text of many lines cannot
    hold (:data:`NOT_LINES`), or None."""
    if value.isascii() and value.isprintable():
        return None
    found = NOT_LINES.search(value)
    return None if found is None else found.start()


# A line break however a tool wrote it: CR LF, a lone CR (progress output that
# rewrites its line) and CR CR LF (a CR LF written through a second CR LF translation)
# are each one line break.
_BREAK = re.compile(r"\r+\n|\r")


def lf_lines(value: str) -> str:
    """``value`` with each line break (CR LF, CR CR LF, a lone CR) as LF."""
    return _BREAK.sub("\n", value) if "\r" in value else value


def as_lines(value: str, limit: int | None = None) -> str:
    """Machine-written text of many lines (a tool's output, an error's message) made
    text of many lines instead of refused: line breaks as LF (:func:`lf_lines`) and
    every other control character :data:`NOT_LINES` refuses (an ESC of colour codes, a
    NUL, DEL, C1) as its visible escape (``\\x1b``). With ``limit``: at most that many
    characters of the result, cut before an escape that would not fit whole (a cut of
    the escaped text could keep ``\\x`` of ``\\x1b``, which reads as another text)."""
    if value.isascii() and value.isprintable():
        return value if limit is None else value[:limit]
    text = lf_lines(value)
    if limit is None:
        return NOT_LINES.sub(lambda m: escape(m.group()), text)
    out: list[str] = []
    size, start = 0, 0
    for found in NOT_LINES.finditer(text):
        plain = text[start : found.start()]
        if size + len(plain) >= limit:
            break
        code = escape(found.group())
        if size + len(plain) + len(code) > limit:
            out.append(plain)
            return "".join(out)
        out += (plain, code)
        size += len(plain) + len(code)
        start = found.end()
    out.append(text[start : start + limit - size])
    return "".join(out)


def as_one_line(value: str, replacement: str = "\ufffd") -> str:
    """A provider's one-line text (a display name) kept instead of refused: each
    character one line cannot hold (:data:`NOT_ONE_LINE`) as ``replacement``."""
    if value.isascii() and value.isprintable():
        return value
    return NOT_ONE_LINE.sub(replacement, value)


# Empty text: nothing visible. A value of only whitespace (spaces, tabs, line breaks, a
# no-break space U+00A0, an ideographic space: str.isspace), invisible format characters
# (Unicode's category Cf: a zero-width space U+200B, a word joiner, a BOM, a soft
# hyphen, the bidi marks, embeddings, overrides and isolates, tag characters), the blank
# glyphs (the Hangul fillers U+3164, U+115F, U+1160, U+FFA0 and the blank Braille
# pattern U+2800) and marks with nothing visible to mark (Mn, Me: a combining accent,
# a variation selector such as U+FE0F alone) shows nothing: a title of "\u200b\u200b"
# was taken where one of "\u00a0" was refused as empty. The prepended concatenation
# marks are Cf yet drawn (an Arabic number sign U+0600, the end of ayah U+06DD): they
# show. The rule of every required or non-empty text: the context commands' values and
# tags, repair void's --reason. Bidi controls inside visible text are kept (right-to-left
# text needs its marks and isolates) and never shown raw: :data:`UNSAFE` escapes them in
# every front end's output.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u2800\u3164\uffa0")
# Unicode's Prepended_Concatenation_Mark (PropList.txt): format characters with a glyph.
_DRAWN_FORMAT = frozenset(
    "\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd"
)
_SHOWS_NOTHING = ("Cf", "Mn", "Me")


def blank(value: str) -> bool:
    """Whether ``value`` shows nothing: only whitespace, invisible format characters,
    blank glyphs and marks (with nothing visible they could mark)."""
    if value.isascii():
        return not value.strip()
    return all(
        ch.isspace()
        or ch in _BLANK_GLYPHS
        or (unicodedata.category(ch) in _SHOWS_NOTHING and ch not in _DRAWN_FORMAT)
        for ch in value
    )
