"""What a protobuf ``Struct`` can hold without changing it: the one rule the SDK's
``emit()`` and the sessions format check at the call, naming the field, rather than
protobuf's bare "Unexpected type" or a number silently recorded as another."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

SAFE_INTEGER = 2**53  # a Struct's numbers are doubles: exact up to here
# Deeper than this is refused (protobuf's own JSON parser stops at 100 levels; every
# reader of the ledger renders payloads recursively).
MAX_NESTING = 100
_SURROGATE = "holds a lone UTF-16 surrogate (U+D800 to U+DFFF not in a pair): no character"


def has_lone_surrogate(text: str) -> bool:
    """Does ``text`` hold a lone surrogate (what JSON's ``"\\ud800"`` decodes to)?
    Nothing can encode it as UTF-8: protobuf, NATS and every store refuse it."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SCALARS = (str, int, float, bool, type(None))


class NotAStructValue(ValueError):
    """``field`` (as the caller spells paths) and what is wrong there; ``wrong_type``
    for a value no Struct holds at all (a datetime, a set, bytes, a non-str key), else
    a number it would change (beyond 2^53, NaN, infinity)."""

    def __init__(self, field: str, message: str, *, wrong_type: bool) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.wrong_type = wrong_type


def check_struct_value(
    value: Any,
    where: str,
    key_path: Callable[[str, str], str],
    *,
    noun: str = "sent",
    depth: int = 0,
) -> None:
    """Raise ``NotAStructValue`` for the first part of ``value`` a Struct cannot hold
    as it is; ``key_path(where, key)`` spells a mapping member's field, ``noun`` says
    what the caller does with the value ("sent", "recorded"). A string or key holding a
    lone surrogate (JSON's ``"\\ud800"``: no character, protobuf raised a bare
    UnicodeEncodeError) and nesting past MAX_NESTING levels (a RecursionError) are
    refused too."""
    if depth > MAX_NESTING:
        raise NotAStructValue(
            where, f"is nested deeper than {MAX_NESTING} levels", wrong_type=False
        )
    if isinstance(value, str) and has_lone_surrogate(value):
        raise NotAStructValue(where, _SURROGATE, wrong_type=False)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SAFE_INTEGER:
        raise NotAStructValue(
            where, f"integer {value} is beyond 2^53; send it as a string", wrong_type=False
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise NotAStructValue(where, f"{value} is not a JSON number", wrong_type=False)
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, dict):  # a Struct takes no other mapping (bare "Unexpected type")
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotAStructValue(
                    where,
                    f"key {key!r} must be a string, not {type(key).__name__}",
                    wrong_type=True,
                )
            if has_lone_surrogate(key):
                raise NotAStructValue(where, f"a key {_SURROGATE}", wrong_type=False)
            check_struct_value(item, key_path(where, key), key_path, noun=noun, depth=depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_struct_value(item, f"{where}[{i}]", key_path, noun=noun, depth=depth + 1)
        return
    raise NotAStructValue(
        where,
        f"a {type(value).__name__} cannot be {noun} (JSON values only: str, int, "
        "float, bool, None, lists and objects with str keys)",
        wrong_type=True,
    )
