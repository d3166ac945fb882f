"""The typed clients (jetsource.client) outside the happy ``async with`` path. A client
made at import time, outside any event loop, failed its first call with "got Future
attached to a different loop" (grpc.aio binds a channel to the loop it is made in), and
so did one used by a second ``asyncio.run``; a timeout of 0 or an empty target failed
each call later (DEADLINE_EXCEEDED at once, UNKNOWN "the target uri is not valid")
rather than at construction. No server here: an unreachable address is enough to see
that the call reaches grpc (AioRpcError) instead of failing before it."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from jetsource.client import ContextClient, QueryClient

NOWHERE = "127.0.0.1:1"
REACHED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_client_made_outside_a_loop_works_in_one_and_in_the_next() -> None:
    commands = ContextClient(NOWHERE, timeout=0.5)
    queries = QueryClient(NOWHERE, timeout=0.5)

    async def call() -> list[grpc.StatusCode]:
        codes = []
        for coro in (commands.create_context("s-1", title="t"), queries.get_context("s-1")):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await coro
            codes.append(raised.value.code())
        return codes

    for _ in range(2):  # a second asyncio.run: a new loop, a new connection
        assert all(code in REACHED for code in asyncio.run(call()))


async def test_close_twice_then_a_call_says_closed() -> None:
    for client in (ContextClient(NOWHERE, timeout=0.5), QueryClient(NOWHERE, timeout=0.5)):
        async with client:
            pass
        await client.close()  # again: nothing
        with pytest.raises(grpc.aio.UsageError, match=f"{type(client).__name__} is closed"):
            if isinstance(client, ContextClient):
                await client.create_context("s-1", title="t")
            else:
                await client.get_context("s-1")
    q = QueryClient(NOWHERE)
    await q.close()
    with pytest.raises(grpc.aio.UsageError, match="closed"):
        q.watch("s-1")


async def test_a_client_used_from_another_running_loop_says_so() -> None:
    client = QueryClient(NOWHERE, timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError):
        await client.get_context("s-1")  # bound to this loop now
    seen: list[BaseException] = []

    def other_thread() -> None:
        async def call() -> None:
            await client.get_context("s-1")

        try:
            asyncio.run(call())
        except BaseException as exc:
            seen.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(10)
    assert isinstance(seen[0], grpc.aio.UsageError), seen
    assert "another running event loop" in str(seen[0])
    await client.close()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"target": ""}, "target"),
        ({"target": "  "}, "target"),
        ({"target": NOWHERE, "timeout": 0}, "timeout"),
        ({"target": NOWHERE, "timeout": -1.0}, "timeout"),
        ({"target": NOWHERE, "timeout": float("nan")}, "timeout"),
    ],
)
def test_bad_construction_is_a_value_error_naming_the_argument(
    kwargs: dict[str, object], named: str
) -> None:
    for cls in (ContextClient, QueryClient):
        with pytest.raises(ValueError, match=named):
            cls(**kwargs)  # type: ignore[arg-type]
