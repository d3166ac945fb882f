"""The messaging ingest (omni) and the projector's dead letters behind the TUI: each a
table refreshed every few seconds, Enter shows one row in full below it. Both are
read-only; a service that is not there is a banner naming it, retried on its own."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Input, Label, Static

from jetsource.core.clock import format_rfc3339_ns
from jetsource.domains.sessions.format import format_ts
from jetsource.tui.backend import Backend, StackDown
from jetsource.tui.lifecycle import Banner, Refreshing, one_read, while_shown
from jetsource.tui.session_view import CELL_WIDTH, refill, styled
from jetsource.tui.text import SafeInput, clean, safe

# How much of a raw payload or a dead letter's event the detail shows.
PAYLOAD_CHARS = 4000


class ListScreen(Refreshing):
    """A table read every ``refresh_s`` (which is also the retry of a missing
    service), a summary line, and a detail pane below for the row Enter selects."""

    TITLE_TEXT = ""
    COLUMNS: tuple[str, ...] = ()
    HINT = ""
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reload", "Reload"),
        Binding("escape", "focus_table", "Table", show=False),
        # priority: the table has the keys, and its own PgUp/PgDn moved its cursor, so
        # the detail these are said to scroll (a raw payload, a letter) never moved
        Binding("pagedown", "page(1)", "Detail down", show=False, priority=True),
        Binding("pageup", "page(-1)", "Detail up", show=False, priority=True),
    ]

    READ_ON_RESUME = False

    def __init__(self, backend: Backend, refresh_s: float = 2.0, screen_id: str = "") -> None:
        super().__init__(refresh_s, screen_id)
        self.backend = backend
        self._shown: list[tuple[Any, ...]] | None = None

    def compose(self) -> ComposeResult:
        yield Banner(id="banner")
        yield Label(Text(self.TITLE_TEXT, style="bold"), id="title")
        yield Static(Text("loading…", style="dim"), id="summary")
        yield from self.extra()
        yield DataTable(id="rows", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="detail-scroll"):
            yield Static(Text(self.HINT, style="dim"), id="detail")
        yield Footer()

    def extra(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.query_one(Banner).clear()
        table = self.query_one("#rows", DataTable)
        table.add_columns(*self.COLUMNS)
        table.focus()
        self.reload()
        self.set_interval(self.refresh_s, self.tick)

    def action_reload(self) -> None:
        self.reload()

    def action_focus_table(self) -> None:
        self.query_one("#rows", DataTable).focus()

    def action_page(self, direction: int) -> None:
        box = self.query_one("#detail-scroll", VerticalScroll)
        box.scroll_to(y=box.scroll_y + direction * max(box.size.height - 1, 1), animate=False)

    @work(group="list")
    @one_read
    async def reload(self) -> None:
        banner = self.query_one(Banner)
        try:
            rows = await self.read()
        except StackDown as exc:
            banner.show(f"{exc} — retrying every {self.refresh_s:g}s")
            return
        banner.clear()
        if rows != self._shown:
            self._redraw(rows)
        self.loaded += 1

    async def read(self) -> list[tuple[Any, ...]]:
        """Rows: (key, cell, cell, ...), cells already made safe."""
        raise NotImplementedError

    def empty(self) -> str:
        raise NotImplementedError

    def _redraw(self, rows: list[tuple[Any, ...]]) -> None:
        def add(row: tuple[Any, ...]) -> None:
            table.add_row(*row[1:], key=str(row[0]))

        table = self.query_one("#rows", DataTable)
        refill(table, self._shown, rows, add)
        self._shown = rows
        summary = self.query_one("#summary", Static)
        if rows:
            summary.update(Text(self.count(len(rows)), style="dim"))
        else:
            summary.update(Text(self.empty(), style="yellow"))

    def count(self, n: int) -> str:
        raise NotImplementedError

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "rows" and event.row_key.value:
            self.show(str(event.row_key.value))

    @work(exclusive=True, group="detail")
    @while_shown
    async def show(self, key: str) -> None:
        try:
            detail = await self.detail(key)
        except StackDown as exc:
            self.query_one(Banner).show(f"{exc} — retrying every {self.refresh_s:g}s")
            return
        except LookupError as exc:
            self.notify(clean(exc, 300), severity="error")
            return
        self.query_one("#detail", Static).update(detail)
        self.query_one("#detail-scroll", VerticalScroll).scroll_home(animate=False)

    async def detail(self, key: str) -> Text:
        raise NotImplementedError


def _enum(value: Any, enum: Any, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def _ts(stamp: Any, short: bool = False) -> str:
    """A protobuf Timestamp in full, or (``short``, for a table) to the millisecond."""
    if stamp is None or not (stamp.seconds or stamp.nanos):
        return ""
    ns = stamp.seconds * 1_000_000_000 + stamp.nanos
    return format_ts(ns) if short else format_rfc3339_ns(ns)


def _line(out: Text, label: str, value: object) -> None:
    out.append(f"{label:<14}", style="dim")
    out.append(f"{clean(value)}\n")


class OmniScreen(ListScreen):
    """The messaging ingress's recent events (ListRecentEvents), newest first; Enter
    one event (GetEvent, with its raw payload); i an identity by id or provider:handle
    (GetIdentity / FindIdentity) with its handles, HANDLES_AT_ONCE at a time (n: more)."""

    TITLE_TEXT = "Messages (omni)"
    COLUMNS = ("seq", "received", "provider", "instance", "type", "direction", "sender",
               "status")  # fmt: skip
    HINT = "Enter: the event in full  ·  i: an identity by id or provider:handle"
    BINDINGS: ClassVar[list[BindingType]] = [
        *ListScreen.BINDINGS,
        Binding("i", "focus_identity", "Identity"),
        Binding("n", "more_handles", "More handles"),
    ]
    # Handles an identity's detail reads at a time (GetIdentity's pages followed); n
    # reads as many more. Only the server's first page (1,000) was shown, as if all.
    HANDLES_AT_ONCE = 5_000
    # Merged identities named in the detail (the rest counted).
    MERGED_SHOWN = 100

    def __init__(self, backend: Backend, refresh_s: float = 2.0) -> None:
        super().__init__(backend, refresh_s, "omni-screen")
        # The identity the detail shows and the token its handles go on from ("": all
        # shown); None while the detail shows something else.
        self._handles: tuple[Any, str] | None = None

    def extra(self) -> ComposeResult:
        yield SafeInput(placeholder="identity: its id, or provider:handle, then Enter",
                    id="identity")  # fmt: skip

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#identity", Input).display = False

    def action_focus_table(self) -> None:
        self.query_one("#identity", Input).display = False  # Escape leaves the lookup
        super().action_focus_table()

    def action_focus_identity(self) -> None:
        box = self.query_one("#identity", Input)
        box.value = ""
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "identity":
            return
        value = event.input.value.strip()
        event.input.display = False
        self.action_focus_table()
        if value:
            self.lookup(value)

    @work(exclusive=True, group="detail")
    @while_shown
    async def lookup(self, value: str) -> None:
        provider, sep, handle = value.partition(":")
        try:
            if sep and provider and handle:
                found = await self.backend.find_identity(provider.strip(), handle.strip())
                value = found.identity_id  # its handles: GetIdentity's pages
            ident, token = await self.backend.identity(value, self.HANDLES_AT_ONCE)
        except (StackDown, LookupError) as exc:
            self._identity_unread(exc, repr(clean(value, 80)))
            return
        self._handles = (ident, token)
        self.query_one("#detail", Static).update(self._identity(ident, token))

    def _identity_unread(self, exc: StackDown | LookupError, label: str) -> None:
        """Say why an identity (``label``) was not read: the stack down on the banner,
        any other failure (not found, a bad argument) as an error."""
        if isinstance(exc, StackDown):
            self.query_one(Banner).show(f"{exc} — retrying every {self.refresh_s:g}s")
        else:
            self.notify(f"identity {label}: {clean(exc, 300)}", severity="error")

    def action_more_handles(self) -> None:
        if self._handles is None or not self._handles[1]:
            self.notify("no identity with more handles is shown", severity="warning")
            return
        self.more_handles()

    @work(exclusive=True, group="detail")
    @while_shown
    async def more_handles(self) -> None:
        if self._handles is None or not self._handles[1]:
            return
        ident, token = self._handles
        try:
            more, token = await self.backend.identity(
                ident.identity_id, self.HANDLES_AT_ONCE, token
            )
        except (StackDown, LookupError) as exc:
            self._identity_unread(exc, ident.identity_id)
            return
        ident.handles.extend(more.handles)
        ident.handle_count = more.handle_count  # the total as its last page had it
        self._handles = (ident, token)
        self.query_one("#detail", Static).update(self._identity(ident, token))

    @classmethod
    def _identity(cls, ident: Any, token: str = "") -> Text:
        out = Text()
        out.append(f"Identity {clean(ident.identity_id)}\n", style="bold")
        _line(out, "name", ident.display_name)
        _line(out, "created by", ident.created_by)
        if ident.merged_into:
            _line(out, "merged into", ident.merged_into)
        merged = max(ident.merged_from_count, len(ident.merged_from))
        if merged:
            named = ", ".join(ident.merged_from[: cls.MERGED_SHOWN])
            rest = merged - min(len(ident.merged_from), cls.MERGED_SHOWN)
            _line(out, "merged from", f"{named} (and {rest} more)" if rest else named)
        # handle_count (the last page's): 0 from a server older than it (which sent
        # every handle). n is offered only while a page token goes on: offered from the
        # count alone, it was offered (and refused) when handles were linked away or in
        # while paging; then the count and the handles read differ, and both are said.
        count = ident.handle_count or len(ident.handles)
        shown = len(ident.handles)
        if token:
            out.append(f"\nHandles ({count}; the first {shown} shown, n: more)\n", style="bold")
        elif count != shown:
            out.append(f"\nHandles ({count}; {shown} shown)\n", style="bold")
        else:
            out.append(f"\nHandles ({count})\n", style="bold")
        for h in ident.handles:
            name = f"  {clean(h.display_name, CELL_WIDTH)}" if h.display_name else ""
            where = f"  [{clean(h.instance, CELL_WIDTH)}]" if h.instance else ""
            out.append(f"  {clean(h.provider)}:{clean(h.external_id)}{where}{name}\n")
        return out

    async def read(self) -> list[tuple[Any, ...]]:
        from jetsource._gen.omni.v1 import events_pb2

        got = await self.backend.recent_events()
        rows = []
        for view in got.events:
            e = view.event
            sender = e.sender_name or e.sender_handle
            if e.sender_identity_id:
                who = e.sender_identity_id
                sender = f"{sender} ({who[:8]})" if sender else who
            state = styled(view.status.state or "received")
            if view.status.attempts > 1:
                state = Text.assemble(state, (f" attempt {view.status.attempts}", "dim"))
            rows.append(
                (
                    e.id,
                    str(view.stream_seq),
                    _ts(e.received_at, short=True),
                    safe(e.provider, CELL_WIDTH),
                    safe(e.instance_name, CELL_WIDTH),
                    _enum(e.event_type, events_pb2.EventType, "EVENT_TYPE_"),
                    _enum(e.direction, events_pb2.Direction, "DIRECTION_"),
                    safe(sender, CELL_WIDTH),
                    state,
                )
            )
        return rows

    def empty(self) -> str:
        return (
            "no messages in the last 24 hours: a webhook the ingress accepts "
            "(jetsource-ingest) shows up here"
        )

    def count(self, n: int) -> str:
        return f"{n} event{'s' if n != 1 else ''}, newest first (the last 24 hours)"

    async def detail(self, key: str) -> Text:
        from jetsource._gen.omni.v1 import events_pb2, raw_pb2

        self._handles = None  # an event now: n has no identity to go on with
        got = await self.backend.omni_event(key)
        view, e, st = got.event, got.event.event, got.event.status
        out = Text()
        out.append(f"Event {clean(e.id)}  (stream seq {view.stream_seq})\n", style="bold")
        _line(out, "provider", f"{e.provider} / {e.instance_name} ({e.provider_format})")
        _line(out, "type", _enum(e.event_type, events_pb2.EventType, "EVENT_TYPE_"))
        _line(out, "direction", _enum(e.direction, events_pb2.Direction, "DIRECTION_"))
        _line(out, "sender", f"{e.sender_name} {e.sender_handle} → {e.sender_identity_id}")
        if e.recipient_handle or e.recipient_identity_id:
            _line(out, "recipient", f"{e.recipient_handle} → {e.recipient_identity_id}")
        _line(out, "conversation", e.conversation_id)
        _line(out, "received", _ts(e.received_at))
        _line(out, "content", _enum(e.content_type, events_pb2.ContentType, "CONTENT_TYPE_"))
        if e.content_text:
            for text_line in e.content_text.splitlines() or [""]:
                _line(out, "", text_line)
        out.append("\nProcessing\n", style="bold")
        out.append(f"{'status':<14}", style="dim")
        out.append_text(styled(st.state or "received"))
        out.append(f"  attempts {st.attempts}  retries {st.retry_count}\n")
        if st.worker:
            _line(out, "worker", st.worker)
        if st.last_error:
            _line(out, "last error", st.last_error)
        if st.HasField("updated_at"):
            _line(out, "updated", _ts(st.updated_at))
        if got.HasField("raw"):
            raw = got.raw
            verdict = _enum(raw.verdict, raw_pb2.Verdict, "VERDICT_")
            out.append(f"\nRaw payload {clean(raw.id)}\n", style="bold")
            _line(out, "request", f"{raw.method} {raw.path} → {raw.http_status} ({verdict})")
            _line(out, "size", f"{raw.body_size} bytes{' (cut)' if raw.body_truncated else ''}")
            body = raw.body[:PAYLOAD_CHARS].decode("utf-8", "replace")
            for body_line in body.splitlines():
                out.append(f"  {clean(body_line, 200)}\n")
            if len(raw.body) > PAYLOAD_CHARS:
                out.append("  … (`jetsource omni raw show ID --body` prints it all)\n", "dim")
        return out


# How many bytes of an event the detail shows as hex (16 a line).
HEX_BYTES = 1024


def _hex(out: Text, data: bytes) -> None:
    """``data`` as hex, 16 bytes a line with their printable ASCII beside them."""
    for at in range(0, min(len(data), HEX_BYTES), 16):
        chunk = data[at : at + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"  {at:04x}  {chunk.hex(' '):<47}  {text}\n")
    if len(data) > HEX_BYTES:
        out.append(f"  … {len(data) - HEX_BYTES} bytes more\n", style="dim")


def _envelope(data: bytes, subject: str) -> Any:
    """The stored event's EventEnvelope, completed from its subject
    (``<prefix>.<aggregate>.<type>``) as the event store reads it, or None when
    ``data`` is not one (a poison a hostile publisher wrote: shown as it is)."""
    from google.protobuf.message import DecodeError

    from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope

    envelope = EventEnvelope()
    try:
        envelope.ParseFromString(data)
    except DecodeError:
        return None
    if envelope.aggregate_version < 1 or envelope.schema_version < 1:
        return None
    parts = subject.rsplit(".", 2)
    if len(parts) == 3:
        envelope.aggregate_id = envelope.aggregate_id or parts[1]
        envelope.event_type = envelope.event_type or parts[2]
    return envelope


def event_as_stored(out: Text, data: bytes, subject: str, codec: Any, domains: str) -> None:
    """A dead letter's event: its envelope, then its payload by its domain's codec
    (``codec``, None when this process does not register the domain: hex, saying so).
    Shown as UTF-8 text was the envelope's protobuf bytes: a line of escapes, the
    payload's strings among them, and what was not UTF-8 as U+FFFD."""
    from google.protobuf import text_format
    from google.protobuf.message import Message

    envelope = _envelope(data, subject)
    if envelope is None:
        try:
            body = data.decode("utf-8")[:PAYLOAD_CHARS]  # not cut inside a character
        except UnicodeDecodeError:
            out.append(f"\nEvent as stored ({len(data)} bytes, not an event envelope)\n",
                       style="bold")  # fmt: skip
            _hex(out, data)
            return
        out.append("\nEvent as stored (not an event envelope)\n", style="bold")
        for body_line in body.splitlines():
            out.append(f"  {clean(body_line, 200)}\n")
        return
    e = envelope
    kind = f"{e.event_type} v{e.schema_version}"
    out.append("\nEvent as stored\n", style="bold")
    _line(out, "type", kind)
    _line(out, "aggregate", f"{e.aggregate_id} version {e.aggregate_version}")
    for label, value in (
        ("aggr. type", e.aggregate_type),
        ("parent", e.parent_aggregate_id),
        ("causation", e.causation_id),
        ("correlation", e.correlation_id),
        ("source", e.source),
        ("idempotency", e.idempotency_key),
    ):
        if value:
            _line(out, label, value)
    if e.HasField("occurred_at"):
        _line(out, "occurred", _ts(e.occurred_at))
    for key in sorted(e.metadata):
        _line(out, "metadata", f"{key}: {e.metadata[key]}")
    if e.sealed:
        _line(out, "sealed", f"personal fields of {len(e.sealed)} subject(s), not opened here")
    out.append(f"\nPayload ({len(e.payload)} bytes)\n", style="bold")
    if codec is None:
        out.append(
            f"  no codec for {clean(kind, 80)} here: JETSOURCE_PROJECTOR__DOMAINS "
            f"({clean(domains, 80)}) does not register its domain; shown as hex\n",
            style="yellow",
        )
        _hex(out, e.payload)
        return
    try:
        event = codec.decode(e.event_type, e.schema_version, e.payload)
    except Exception as exc:  # the poison itself: a payload or an upcaster that fails
        out.append(f"  does not decode: {clean(exc, 300)}; shown as hex\n", style="yellow")
        _hex(out, e.payload)
        return
    if not isinstance(event, Message):  # UnknownEvent: a type or version not known here
        out.append(f"  {clean(kind, 80)}: {clean(event.reason, 200)}; shown as hex\n",
                   style="yellow")  # fmt: skip
        _hex(out, e.payload)
        return
    out.append(f"  {type(event).__name__}\n", style="dim")
    shown = text_format.MessageToString(event, as_utf8=True)
    for body_line in shown[:PAYLOAD_CHARS].splitlines():
        out.append(f"  {clean(body_line, 200)}\n")
    if len(shown) > PAYLOAD_CHARS:
        out.append("  …\n", style="dim")


class DeadLettersScreen(ListScreen):
    """The projector's dead letters of every read model (``jetsource projector dlq
    list``), oldest first; Enter one in full (``dlq show``). Read-only: retry and
    discard are the CLI's."""

    TITLE_TEXT = "Dead letters"
    COLUMNS = ("dlq seq", "model", "version", "stream seq", "aggregate", "tries", "filed",
               "reason")  # fmt: skip
    HINT = (
        "Enter: the letter in full  ·  read-only: `jetsource projector dlq retry --seq N` "
        "applies it again, `jetsource projector dlq discard --seq N` drops it"
    )

    def __init__(self, backend: Backend, refresh_s: float = 2.0) -> None:
        super().__init__(backend, refresh_s, "deadletters-screen")

    async def read(self) -> list[tuple[Any, ...]]:
        letters = await self.backend.dead_letters()
        return [
            (
                d.dlq_seq,
                str(d.dlq_seq),
                safe(d.model, CELL_WIDTH),
                f"v{d.version}",
                str(d.original_seq),
                safe(d.aggregate_id, CELL_WIDTH),
                str(d.tries),
                format_ts(d.time_ns),
                safe(d.reason, 200),
            )
            for d in letters
        ]

    def empty(self) -> str:
        return "no dead letters: every read model applied every event"

    def count(self, n: int) -> str:
        return (
            f"{n} dead letter{'s' if n != 1 else ''}, oldest first  ·  "
            "`jetsource projector dlq retry --seq N` applies one again"
        )

    async def detail(self, key: str) -> Text:
        d = await self.backend.dead_letter(int(key))
        out = Text()
        out.append(f"Dead letter {d.dlq_seq}\n", style="bold")
        for label, value in d.summary().items():
            _line(out, label, value)
        codec = self.backend.event_codec(d.original_subject)
        domains = self.backend.projector_settings().projector.domains
        event_as_stored(out, d.data, d.original_subject, codec, domains)
        out.append(
            f"\nretry: jetsource projector dlq retry --seq {d.dlq_seq}   "
            f"discard: jetsource projector dlq discard --seq {d.dlq_seq}\n",
            style="dim",
        )
        return out
