"""What a protobuf ``Struct`` can hold without changing it: the one rule the SDK's
``emit()`` and the sessions format check at the call, naming the field, rather than
protobuf's bare "Unexpected type" or a number silently recorded as another."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

SAFE_INTEGER = 2**53  # a Struct's numbers are doubles: exact up to here
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
    value: Any, where: str, key_path: Callable[[str, str], str], *, noun: str = "sent"
) -> None:
    """Raise ``NotAStructValue`` for the first part of ``value`` a Struct cannot hold
    as it is; ``key_path(where, key)`` spells a mapping member's field, ``noun`` says
    what the caller does with the value ("sent", "recorded")."""
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
            check_struct_value(item, key_path(where, key), key_path, noun=noun)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_struct_value(item, f"{where}[{i}]", key_path, noun=noun)
        return
    raise NotAStructValue(
        where,
        f"a {type(value).__name__} cannot be {noun} (JSON values only: str, int, "
        "float, bool, None, lists and objects with str keys)",
        wrong_type=True,
    )
