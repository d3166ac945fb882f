"""Counting the calls of an object's async method in a test (they go through)."""

from __future__ import annotations

from typing import Any


class Counted:
    """Replaces ``obj.<name>`` (an async method) by one that counts its calls in
    ``calls`` and awaits the real one."""

    def __init__(self, obj: Any, name: str) -> None:
        self.calls = 0
        real = getattr(obj, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await real(*args, **kwargs)

        setattr(obj, name, counted)
