"""Characters that must not reach a terminal raw, for every front end (the CLI's
output, the TUI): C0 controls, DEL, C1 controls (0x9b is a one-byte CSI on some
terminals), and the bidi marks, embeddings, overrides and isolates that reorder what
follows them. Each is shown as a visible escape (``\\x1b``, ``\\u202e``)."""

from __future__ import annotations

import re

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape(ch: str) -> str:
    """The visible form of one unsafe character."""
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
