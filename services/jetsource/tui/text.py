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
from textual.widgets import Input

from jetsource.core.printable import UNSAFE, escape

_SHOWN = {"\n": "↵", "\t": " "}


def _visible(match: re.Match[str]) -> str:
    ch = match.group()
    return _SHOWN.get(ch) or escape(ch)


def clean(value: object, limit: int | None = None) -> str:
    """``value`` as one printable line, at most ``limit`` cells wide (with "…")."""
    text = UNSAFE.sub(_visible, str(value))
    if limit is not None and cell_len(text) > limit:  # cells: CJK is two wide
        cut = Text(text[: limit + 1])
        cut.truncate(limit, overflow="ellipsis")
        text = cut.plain
    return text


def safe(value: object, limit: int | None = None, style: str = "") -> Text:
    """A :class:`Text` of ``value`` cleaned by :func:`clean`, never markup-parsed."""
    return Text(clean(value, limit), style=style, no_wrap=True, overflow="ellipsis")


class SafeInput(Input):
    """An :class:`Input` that takes no control or bidi character: a paste (or a key)
    holding ``\\x1b[2J`` or a right-to-left override put it in the value, and the
    input drew it raw, so the terminal ran it. They are dropped (a tab is a space);
    a pasted newline already ends the paste's one line."""

    def replace(self, text: str, start: int, end: int) -> None:
        super().replace(UNSAFE.sub(lambda m: " " if m.group() == "\t" else "", text), start, end)
