"""A session's emit() with a value a Struct cannot hold raised protobuf's bare
"Unexpected type" (ValueError) or "bad argument type for built-in operation"
(TypeError), naming nothing; now EventFormatError naming the field, at the call."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.format import EventFormatError


class Writer:
    def __init__(self) -> None:
        self.batches: list[Any] = []

    async def record(self, batch: Any) -> None:
        self.batches.append(batch)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"at": datetime.datetime(2026, 1, 1)}, "data.at"),
        ({"a": {"b": [1, {2, 3}]}}, "data.a.b[1]"),
        ({"blob": b"x"}, "data.blob"),
        ({1: "x"}, "data"),
    ],
)
async def test_an_unrecordable_value_is_refused_naming_its_field(
    data: dict[Any, Any], field: str
) -> None:
    async with session(Writer(), "probe") as s:  # type: ignore[arg-type]
        with pytest.raises(EventFormatError) as raised:
            s.emit("step", data)
        assert raised.value.field == field
        s.emit("step", {"ok": [1, (2, 3)]})  # tuples are lists
