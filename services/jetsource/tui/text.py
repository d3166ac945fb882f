"""Text from the ledger is whatever a recorder sent: commands, node ids, errors and
payloads may hold ANSI escapes, control or bidi characters, newlines, or run for
kilobytes. Rich strips only a few control codes (not ESC), so an escape in a
command would reach the terminal and redraw it. Everything the TUI shows from the
stack goes through :func:`safe` first: controls become visible escapes (``\\x1b``,
``↵`` for a newline), and a length cap keeps one field from pushing the others off
screen (the full value stays in the log and in ``jetsource sessions export``).
"""

from __future__ import annotations

import re

from rich.cells import cell_len
from rich.text import Text

# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI on some terminals), and the
# bidi marks, embeddings, overrides and isolates that reorder what follows them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SHOWN = {"\n": "↵", "\t": " "}


def _visible(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _SHOWN:
        return _SHOWN[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object, limit: int | None = None) -> str:
    """``value`` as one printable line, at most ``limit`` cells wide (with "…")."""
    text = _UNSAFE.sub(_visible, str(value))
    if limit is not None and cell_len(text) > limit:  # cells: CJK is two wide
        cut = Text(text[: limit + 1])
        cut.truncate(limit, overflow="ellipsis")
        text = cut.plain
    return text


def safe(value: object, limit: int | None = None, style: str = "") -> Text:
    """A :class:`Text` of ``value`` cleaned by :func:`clean`, never markup-parsed."""
    return Text(clean(value, limit), style=style, no_wrap=True, overflow="ellipsis")
