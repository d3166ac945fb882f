"""Calls in tests: counting an object's async method's calls (they go through); a gRPC
call refused for an answer past the message limit."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest


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


async def answer_too_large(call: Awaitable[Any], name: str, limit: int) -> str:
    """Await ``call`` (a gRPC call whose answer is past the server's message limit of
    ``limit`` bytes): it must fail FAILED_PRECONDITION naming the call ``name``, the
    limit and its setting. Its details, for what a test checks more."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    details = error.details() or ""
    assert details.startswith(f"{name}: the answer is "), details
    assert f"past the {limit:,}-byte message limit" in details, details
    assert "JETSOURCE_GRPC__MAX_MESSAGE_BYTES" in details, details
    return details
