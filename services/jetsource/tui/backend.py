"""What the TUI reads, and how it survives a stack that is down.

Sessions and processes come from the process ledger (``jetsource.domains.sessions``);
contexts from the context query service (GetContext, GetContextAtVersion,
GetContextAtTime). Every call goes through here: a failure to connect or to answer is
a :class:`StackDown` with a message fit for the banner, and the next call tries again
(the connection is opened anew after a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from nats.errors import NoRespondersError as NoResponders

from jetsource.client import QueryClient
from jetsource.core.errors import StreamMissingError
from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.ledger import ProcessSummary, Recorded
from jetsource.domains.sessions.record import SessionRecord
from jetsource.domains.sessions.service import SessionNotFoundError
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.eventstore.jsapi import NoRespondersError as JsNoResponders


class StackDown(Exception):
    """The stack (NATS, or the query service) did not answer; the TUI shows a banner
    and retries."""


class Backend:
    def __init__(
        self,
        settings: SessionsAppSettings,
        query_address: str | None = None,
        connect_timeout_s: float = 3.0,
    ) -> None:
        self.settings = settings
        self.query_address = query_address
        self._timeout = connect_timeout_s
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: SessionsClient | None = None
        self._lock = asyncio.Lock()
        self._query: QueryClient | None = None

    async def client(self) -> SessionsClient:
        async with self._lock:
            if self._client is not None and self._client.nc.is_connected:
                return self._client
            await self._drop()
            stack = contextlib.AsyncExitStack()
            try:
                async with asyncio.timeout(self._timeout):
                    self._client = await stack.enter_async_context(open_sessions(self.settings))
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await stack.aclose()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise StackDown(
                    f"NATS at {self.settings.nats_url()} is not reachable "
                    f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
                ) from exc
            self._stack = stack
            return self._client

    def connection(self) -> str:
        """``up``, ``reconnecting`` (the client is retrying on its own), ``closed`` (it
        gave up: the next call opens a new one) or ``none`` (not opened yet). A live
        follow blocks on a subscription that says nothing while NATS is away, so the
        session view asks this to tell the operator."""
        client = self._client
        if client is None:
            return "none"
        if client.nc.is_connected:
            return "up"
        return "closed" if client.nc.is_closed else "reconnecting"

    async def _drop(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def close(self) -> None:
        await self._drop()
        if self._query is not None:
            with contextlib.suppress(Exception):
                await self._query.close()
            self._query = None

    def _missing(self) -> StackDown:
        stream = self.settings.sessions.stream
        return StackDown(
            f"the ledger's stream {stream} does not exist on {self.settings.nats_url()}: "
            "`jetsource streams ensure` creates it (`jetsource up` does too)"
        )

    async def _call(self, work: Any) -> Any:
        client = await self.client()
        try:
            return await work(client)
        except (SessionNotFoundError, LookupError):
            raise
        except (NoResponders, JsNoResponders, StreamMissingError) as exc:
            # said as what it is (it read "reading from the ledger failed: PROCESS_EVENTS")
            raise self._missing() from exc
        except Exception as exc:
            await self._drop()
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise StackDown(f"reading from the ledger failed ({what})") from exc

    async def list_sessions(self, search: str = "", statuses: tuple[str, ...] = ()) -> list[
        SessionRecord
    ]:  # fmt: skip
        result: list[SessionRecord] = await self._call(
            lambda c: c.sessions.list_sessions(statuses, search)
        )
        return result

    async def events(self, session_id: str) -> list[Recorded]:
        result: list[Recorded] = await self._call(lambda c: c.sessions.reader.events(session_id))
        return result

    async def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Recorded]:
        client = await self.client()
        try:
            async for r in client.sessions.follow(session_id, after_seq, until_end=True):
                yield r
        except asyncio.CancelledError:
            raise
        except (NoResponders, JsNoResponders, StreamMissingError) as exc:
            raise self._missing() from exc
        except Exception as exc:
            await self._drop()
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise StackDown(f"following {session_id} stopped ({what})") from exc

    async def processes(self) -> dict[str, ProcessSummary]:
        result: dict[str, ProcessSummary] = await self._call(
            lambda c: c.sessions.reader.processes()
        )
        return result

    # -- contexts (the context query service) -------------------------------------------

    def _contexts(self) -> QueryClient:
        if self.query_address is None:
            raise StackDown("no context query service configured (JETSOURCE_CLIENT__QUERY)")
        if self._query is None:
            self._query = QueryClient(
                self.query_address, timeout=5.0, security=self.settings.client
            )
        return self._query

    async def _context_call(self, work: Any) -> Any:
        import grpc

        try:
            return await work(self._contexts())
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise LookupError(exc.details() or exc.code().name) from exc
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # a new channel for the next call: the old one backs off for up to two
                # minutes between connection attempts once its server went away
                query, self._query = self._query, None
                if query is not None:
                    with contextlib.suppress(Exception):
                        await query.close()
            raise StackDown(
                f"context query service at {self.query_address}: {exc.code().name} "
                f"{exc.details() or ''}"
            ) from exc

    async def context(self, context_id: str) -> Any:
        return await self._context_call(lambda q: q.get_context(context_id))

    async def context_at_version(self, context_id: str, version: int) -> Any:
        return await self._context_call(lambda q: q.at_version(context_id, version))

    async def context_at_time(self, context_id: str, at_ns: int) -> Any:
        return await self._context_call(lambda q: q.at_time(context_id, at_ns))
