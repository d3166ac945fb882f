"""What the TUI reads, and how it survives a stack that is down.

Sessions and processes come from the process ledger (``jetsource.domains.sessions``);
contexts from the context query service (GetContext, GetContextAtVersion,
GetContextAtTime); messaging events and identities from the omni query service
(``OmniQueryService`` of jetsource-ingest); dead letters from the projector's dead-letter
stream (every letter in it, ordered as ``jetsource projector dlq list`` prints them).
Every call goes through here: a failure to connect or to answer is a :class:`StackDown`
with a message fit for the banner, and the next call tries again (the connection is
opened anew after a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from nats.errors import NoRespondersError as NoResponders

from jetsource.client import QueryClient
from jetsource.core.errors import StreamMissingError, ValidationError
from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.ledger import ProcessList, ProcessSummary, Recorded
from jetsource.domains.sessions.record import SessionRecord
from jetsource.domains.sessions.service import SessionList, SessionNotFoundError
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.eventstore.jsapi import NoRespondersError as JsNoResponders

if TYPE_CHECKING:
    from jetsource.core.codec import EventRegistry
    from jetsource.projection.bootstrap import Projection
    from jetsource.projection.deadletters import DeadLetter
    from jetsource.projection.settings import ProjectorSettings

# Where the omni query service is looked for when no address is given: the ingress's own
# settings (JETSOURCE_INGEST__GRPC_HOST / __GRPC_PORT, 50054), on loopback, as the CLI
# finds the query service from JETSOURCE_QUERY__GRPC_PORT.
OMNI_SETTING = "JETSOURCE_INGEST__GRPC_PORT"


def local_omni_address() -> str:
    import os

    from jetsource.ingest.settings import IngestOptions

    host = os.environ.get("JETSOURCE_INGEST__GRPC_HOST", IngestOptions().grpc_host)
    try:
        port = int(os.environ.get(OMNI_SETTING, IngestOptions().grpc_port))
    except ValueError:
        port = IngestOptions().grpc_port
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::', '[::]') else host}:{port}"


def unreadable(exc: OSError) -> str:
    """A TLS file the client settings name that cannot be read, said with its path and
    the settings that name it."""
    where = f" {exc.filename}" if exc.filename else ""
    return (
        f"cannot read{where} ({exc.strerror or type(exc).__name__}): the client's TLS "
        "files are JETSOURCE_CLIENT__TLS__CA_FILE, __CERT_FILE and __KEY_FILE"
    )


class StackDown(Exception):
    """The stack (NATS, or the query service) did not answer; the TUI shows a banner
    and retries."""


class Backend:
    def __init__(
        self,
        settings: SessionsAppSettings,
        query_address: str | None = None,
        connect_timeout_s: float = 3.0,
        omni_address: str | None = None,
        projector: ProjectorSettings | None = None,
    ) -> None:
        self.settings = settings
        self.query_address = query_address
        self.omni_address = omni_address or local_omni_address()
        self._projector_settings = projector
        self._projection: Projection | None = None
        self._omni: tuple[Any, Any, Any] | None = None  # channel, stub, metadata
        self._timeout = connect_timeout_s
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: SessionsClient | None = None
        self._listing: tuple[SessionsClient, SessionList] | None = None
        self._procs: tuple[SessionsClient, ProcessList] | None = None
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
        await self._drop_omni()
        await self._drop_projection()
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

    async def _failed(self, exc: Exception, doing: str) -> StackDown:
        """What a failed read of the ledger is said as (a connection that failed is
        dropped: the next call opens a new one)."""
        if isinstance(exc, (NoResponders, JsNoResponders, StreamMissingError)):
            # said as what it is (it read "reading from the ledger failed: PROCESS_EVENTS")
            return self._missing()
        await self._drop()
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return StackDown(f"{doing} ({what})")

    async def _call(self, work: Any) -> Any:
        client = await self.client()
        try:
            return await work(client)
        except (SessionNotFoundError, LookupError):
            raise
        except Exception as exc:
            raise await self._failed(exc, "reading from the ledger failed") from exc

    def _list(self, client: SessionsClient) -> SessionList:
        """The sessions list kept between refreshes, one per connection (a new one
        reads whole)."""
        if self._listing is None or self._listing[0] is not client:
            self._listing = (client, SessionList(client.sessions))
        return self._listing[1]

    async def list_sessions(self, search: str = "", statuses: tuple[str, ...] = ()) -> list[
        SessionRecord
    ]:  # fmt: skip
        """Read only what was appended since the last call (see ``SessionList``)."""
        result: list[SessionRecord] = await self._call(
            lambda c: self._list(c).read(statuses, search)
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
        except Exception as exc:
            raise await self._failed(exc, f"following {session_id} stopped") from exc

    def _process_list(self, client: SessionsClient) -> ProcessList:
        """The processes kept between refreshes, one list per connection (a new one
        reads whole)."""
        if self._procs is None or self._procs[0] is not client:
            self._procs = (client, ProcessList(client.sessions.reader))
        return self._procs[1]

    async def processes(self) -> dict[str, ProcessSummary]:
        """Read only what was appended since the last call (see ``ProcessList``)."""
        result: dict[str, ProcessSummary] = await self._call(lambda c: self._process_list(c).read())
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
        except OSError as exc:  # a TLS file of JETSOURCE_CLIENT__TLS__... not readable
            await self._drop_query()
            raise StackDown(
                f"context query service at {self.query_address}: {unreadable(exc)}"
            ) from exc
        except ValidationError as exc:  # a TLS file the channel's check refused
            if not (exc.field or "").startswith("JETSOURCE_CLIENT__"):
                raise
            await self._drop_query()
            raise StackDown(f"context query service at {self.query_address}: {exc}") from exc
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise LookupError(exc.details() or exc.code().name) from exc
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # a new channel for the next call: the old one backs off for up to two
                # minutes between connection attempts once its server went away
                await self._drop_query()
            raise StackDown(
                f"context query service at {self.query_address}: {exc.code().name} "
                f"{exc.details() or ''}"
            ) from exc

    async def _drop_query(self) -> None:
        query, self._query = self._query, None
        if query is not None:
            with contextlib.suppress(Exception):
                await query.close()

    async def context(self, context_id: str) -> Any:
        return await self._context_call(lambda q: q.get_context(context_id))

    async def context_at_version(self, context_id: str, version: int) -> Any:
        return await self._context_call(lambda q: q.at_version(context_id, version))

    async def context_at_time(self, context_id: str, at_ns: int) -> Any:
        return await self._context_call(lambda q: q.at_time(context_id, at_ns))

    # -- omni (the messaging ingress's OmniQueryService) --------------------------------

    def _omni_stub(self) -> tuple[Any, Any]:
        if self._omni is None:
            from jetsource._gen.omni.v1 import query_pb2_grpc
            from jetsource.client import open_channel

            channel, metadata = open_channel(self.omni_address, self.settings.client)
            self._omni = (channel, query_pb2_grpc.OmniQueryServiceStub(channel), metadata)
        return self._omni[1], self._omni[2]

    async def _drop_omni(self) -> None:
        omni, self._omni = self._omni, None
        if omni is not None:
            with contextlib.suppress(Exception):
                await omni[0].close()

    async def _omni_call(self, rpc: str, request: Any) -> Any:
        import grpc

        try:
            stub, metadata = self._omni_stub()
            return await getattr(stub, rpc)(request, timeout=5.0, metadata=metadata)
        except OSError as exc:  # a TLS file of JETSOURCE_CLIENT__TLS__... not readable
            await self._drop_omni()
            raise StackDown(
                f"omni query service at {self.omni_address}: {unreadable(exc)}"
            ) from exc
        except ValidationError as exc:  # a TLS file the channel's check refused
            if not (exc.field or "").startswith("JETSOURCE_CLIENT__"):
                raise
            await self._drop_omni()
            raise StackDown(f"omni query service at {self.omni_address}: {exc}") from exc
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise LookupError(exc.details() or exc.code().name) from exc
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # a new channel for the next call (the old one backs off for minutes)
                await self._drop_omni()
            raise StackDown(
                f"omni query service at {self.omni_address} ({OMNI_SETTING}): "
                f"{exc.code().name} {exc.details() or ''}"
            ) from exc

    async def recent_events(self, page_size: int = 200) -> Any:
        from jetsource._gen.omni.v1 import query_pb2 as pb

        return await self._omni_call(
            "ListRecentEvents", pb.ListRecentEventsRequest(page_size=page_size)
        )

    async def omni_event(self, event_id: str) -> Any:
        from jetsource._gen.omni.v1 import query_pb2 as pb

        return await self._omni_call(
            "GetEvent", pb.GetEventRequest(event_id=event_id, include_raw=True)
        )

    async def identity(self, identity_id: str, most: int = 1, token: str = "") -> tuple[Any, str]:
        """GetIdentity's pages followed (next_page_token), from ``token``, until ``most``
        handles came (a page past it at most: the server's page size) or there are no
        more: the identity with those handles, and the token to go on from ("" when
        every handle came). One page was read: an identity of more handles than the
        server's page (1,000) showed that many as if they were all."""
        from jetsource._gen.omni.v1 import query_pb2 as pb

        view: Any = None
        while True:
            got = await self._omni_call(
                "GetIdentity", pb.GetIdentityRequest(identity_id=identity_id, page_token=token)
            )
            if view is None:
                view = got.identity
            else:
                view.handles.extend(got.identity.handles)
                # The total as the last page has it (handles linked while paging).
                view.handle_count = got.identity.handle_count
            token = got.next_page_token
            if not token or len(view.handles) >= most:
                return view, token

    async def find_identity(self, provider: str, handle: str) -> Any:
        """FindIdentity: the identity with its first handles only (the server's bound;
        handle_count says how many it has)."""
        from jetsource._gen.omni.v1 import query_pb2 as pb

        got = await self._omni_call(
            "FindIdentity", pb.FindIdentityRequest(provider=provider, external_id=handle)
        )
        return got.identity

    # -- dead letters (the projector's dead-letter stream) -------------------------------

    def projector_settings(self) -> ProjectorSettings:
        """Loaded when the dead letters are first read; a setting that does not
        validate is the banner naming its variable (it ended the TUI with a
        traceback)."""
        if self._projector_settings is None:
            import pydantic

            from jetsource.core.settings import settings_error
            from jetsource.projection.settings import ProjectorSettings

            try:
                self._projector_settings = ProjectorSettings.load()
            except pydantic.ValidationError as exc:
                raise StackDown(
                    f"the dead letters are read with the projector's settings: "
                    f"{settings_error(exc, ProjectorSettings)} (fix it and start the TUI again)"
                ) from exc
        return self._projector_settings

    async def _drop_projection(self) -> None:
        p, self._projection = self._projection, None
        if p is not None:
            with contextlib.suppress(Exception):
                await p.close()

    async def _dlq_call(self, work: Any) -> Any:
        from jetsource.core.settings import redact_url
        from jetsource.projection.bootstrap import DomainsError, open_projection

        settings = self.projector_settings()
        where = redact_url(settings.nats_url())
        async with self._lock:
            if self._projection is None or not self._projection.nc.is_connected:
                await self._drop_projection()
                try:
                    async with asyncio.timeout(self._timeout):
                        self._projection = await open_projection(settings, provision=False)
                except asyncio.CancelledError:
                    raise
                except DomainsError as exc:
                    # The domains module (a developer's own, not installed where the TUI
                    # runs): said as that setting, not as NATS being unreachable.
                    raise StackDown(
                        f"the dead letters are read with the projector's domains: {exc}"
                    ) from exc
                except Exception as exc:
                    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    raise StackDown(
                        f"NATS at {where} is not reachable ({what}) (JETSOURCE_NATS__URL)"
                    ) from exc
            p = self._projection
        try:
            return await work(p)
        except LookupError:
            raise
        except Exception as exc:
            await self._drop_projection()
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise StackDown(
                f"reading the dead letters from NATS at {where} failed ({what})"
            ) from exc

    async def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter of the stream, oldest first (as ``projector dlq list``
        orders them). The whole stream, not the letters of the models this process
        registers: a TUI started without a developer's own domains
        (``JETSOURCE_PROJECTOR__DOMAINS``) listed none of theirs and said "no dead
        letters" while the stream held them."""

        async def every(p: Projection) -> list[DeadLetter]:
            letters = await p.dead_letters.list()
            return sorted(letters, key=lambda d: (d.original_seq, d.time_ns, d.dlq_seq))

        result: list[DeadLetter] = await self._dlq_call(every)
        return result

    async def dead_letter(self, dlq_seq: int) -> DeadLetter:
        """One dead letter (``projector dlq show --seq N``)."""

        async def get(p: Projection) -> DeadLetter:
            letter = await p.dead_letters.get(dlq_seq)
            if letter is None:
                raise LookupError(f"no dead letter with sequence {dlq_seq}")
            return letter

        result: DeadLetter = await self._dlq_call(get)
        return result

    def event_codec(self, subject: str) -> EventRegistry | None:
        """The event registry of the domain whose stream holds ``subject`` (a dead
        letter's original subject), or None when this process does not register that
        domain (JETSOURCE_PROJECTOR__DOMAINS): its events are then shown undecoded."""
        p = self._projection
        if p is None:
            return None
        for name, store in p.stores.items():
            if subject.startswith(store.settings.subject_prefix + "."):
                return p.domains.get(name).registry
        return None
