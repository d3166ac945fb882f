"""The sessions list and one session's progress view (live follow or replay)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, ProgressBar, Static

from jetsource.core.clock import now_ns
from jetsource.core.errors import ValidationError
from jetsource.core.ids import validate_aggregate_id
from jetsource.domains.sessions.format import SessionEvent, format_ts
from jetsource.domains.sessions.progress import (
    COMPLETE,
    FAILED,
    RUNNING,
    SKIPPED,
    WAITING,
    SessionState,
    evolve,
)
from jetsource.domains.sessions.record import ACTIVE, STATUSES, session_status
from jetsource.domains.sessions.service import SessionNotFoundError, not_a_session
from jetsource.tui.backend import Backend, StackDown
from jetsource.tui.lifecycle import Banner, Refreshing, one_read, while_shown
from jetsource.tui.text import SafeInput, clean, safe

STATUS_STYLE = {
    WAITING: "dim",
    RUNNING: "bold yellow",
    COMPLETE: "green",
    FAILED: "bold red",
    SKIPPED: "cyan",
    "active": "bold yellow",
    "completed": "green",
    "failed": "bold red",
    "interrupted": "magenta",
}


# Widest a field from the ledger is drawn (the full value is in the log and the export).
COMMAND_WIDTH = 80
CELL_WIDTH = 48
ERROR_WIDTH = 160
LOG_DATA_WIDTH = 200
# The log holds at most LOG_ROWS events, the ones up to the replay position, and is drawn
# anew with the last LOG_WINDOW when it outgrows that (a session of many thousands of
# events was redrawn whole on every step back; and DataTable.remove_row costs as much as
# the table is long, so rows are not dropped from its top one by one).
LOG_ROWS = 1000
LOG_WINDOW = LOG_ROWS // 2
FAILURE_LINES = 6
CHECKPOINT_EVERY = 100
LIVE_DRAW_S = 0.1


def parse_filter(text: str) -> tuple[str, tuple[str, ...]]:
    """The sessions filter: words to search for, and ``status:<name>`` terms. An unknown
    status is an error naming it (it used to be searched for as text, and matched
    nothing, silently)."""
    statuses, words = [], []
    for part in text.strip().lstrip("/").split():
        if part.startswith("status:"):
            name = part[len("status:") :]
            if name not in STATUSES:
                raise ValueError(
                    f"filter status: {clean(name, CELL_WIDTH)!r} is not a status "
                    f"(one of {', '.join(STATUSES)})"
                )
            statuses.append(name)
        else:
            words.append(part)
    return " ".join(words), tuple(statuses)


def styled(status: str) -> Text:
    return safe(status, CELL_WIDTH, STATUS_STYLE.get(status, ""))


def refill(
    table: DataTable[Any],
    before: list[tuple[Any, ...]] | None,
    rows: list[tuple[Any, ...]],
    add: Callable[[tuple[Any, ...]], None],
) -> None:
    """The table drawn anew with ``rows`` (each row's key first), ``add`` drawing one.
    The cursor stays on the row it was on (new sessions come in at the top: by index
    it would slide to another one, and Enter would open that one), else at its place."""
    keep_index = table.cursor_row
    before = before or []
    keep_key = before[keep_index][0] if 0 <= keep_index < len(before) else None
    table.clear()
    for row in rows:
        add(row)
    if rows:
        keys = [row[0] for row in rows]
        index = keys.index(keep_key) if keep_key in keys else min(keep_index, len(rows) - 1)
        table.move_cursor(row=index)


class SessionsScreen(Refreshing):
    """Every session: status, command, start, duration, event count; filter by text
    or ``status:<name>``; Enter opens one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("/", "focus_filter", "Filter"),
        Binding("r", "reload", "Reload"),
        Binding("escape", "focus_table", "Table", show=False),
    ]

    def __init__(self, backend: Backend, refresh_s: float = 2.0) -> None:
        super().__init__(refresh_s, "sessions-screen")
        self.backend = backend
        # the rows on screen, to skip a no-op redraw (None: draw whatever comes next)
        self._shown: list[tuple[Any, ...]] | None = None
        self._applied: tuple[str, tuple[str, ...]] = ("", ())  # the filter in force (Enter)

    def compose(self) -> ComposeResult:
        yield Banner(id="banner")
        yield Label(Text("Sessions", style="bold"), id="title")
        yield Static(Text("loading…", style="dim"), id="summary")
        yield SafeInput(placeholder="filter: text, or status:active|completed|failed|interrupted",
                    id="filter")  # fmt: skip
        table: DataTable[Any] = DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Banner).clear()
        table = self.query_one("#sessions", DataTable)
        table.add_columns("session", "status", "command", "started", "duration", "events")
        table.focus()  # keys go to the screen and the app; "/" to type a filter
        self.reload()
        self.set_interval(self.refresh_s, self.tick)

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#sessions", DataTable).focus()

    def action_reload(self) -> None:
        self.reload()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            try:
                self._applied = parse_filter(event.input.value)
            except ValueError as exc:  # the list and the filter in force stay as they were
                self.notify(str(exc), severity="error", timeout=8)
                return
            self._shown = None  # redraw even if the rows are the same, for the summary
            self.reload()
            self.action_focus_table()

    def _filter(self) -> tuple[str, tuple[str, ...]]:
        return self._applied

    @work(group="sessions-list")
    @one_read
    async def reload(self) -> None:
        search, statuses = self._filter()
        banner = self.query_one(Banner)
        try:
            records = await self.backend.list_sessions(search, statuses)
        except StackDown as exc:
            banner.show(f"{exc} — retrying every {self.refresh_s:g}s")
            return
        banner.clear()
        rows = [
            (
                r.session_id,
                r.status,
                clean(r.command, COMMAND_WIDTH),
                format_ts(r.started_ns) if r.started_ns else "",
                "" if r.duration_s is None else f"{r.duration_s:.1f}s",
                str(r.event_count),
            )
            for r in records
        ]
        if rows != self._shown:
            self._redraw(rows)
            self._summarize(len(rows))
        self.loaded += 1

    def _summarize(self, count: int) -> None:
        search, statuses = self._applied
        terms = [f"status:{s}" for s in statuses] + ([search] if search else [])
        where = f" matching {clean(' '.join(terms), COMMAND_WIDTH)!r}" if terms else ""
        if count:
            text = Text(f"{count} session{'s' if count != 1 else ''}{where}", style="dim")
        elif terms:
            text = Text(f"no session{where} (/ to change the filter)", style="yellow")
        else:
            text = Text(
                "no sessions in the ledger yet: a command recording one (an emitter, "
                "`jetsource sessions import`) shows up here",
                style="yellow",
            )
        self.query_one("#summary", Static).update(text)

    def _redraw(self, rows: list[tuple[Any, ...]]) -> None:
        def add(row: tuple[Any, ...]) -> None:
            sid, status, command, started, duration, count = row
            table.add_row(
                safe(sid), styled(status), safe(command), started, duration, count, key=sid
            )

        table = self.query_one("#sessions", DataTable)
        refill(table, self._shown, rows, add)
        self._shown = rows

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "sessions" and event.row_key.value:
            self.app.push_screen(SessionScreen(self.backend, str(event.row_key.value)))


class SessionScreen(Screen[None]):
    """One session: levels with progress bars, nodes with their status, the failure
    panel, queue and scanner statistics, the event log (filter by type). An active
    session is followed live; an ended one opens at its end and can be replayed:
    Home to the start, ←/→ step, Space play/pause, +/- speed, g jump to a seq."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("space", "play", "Play/pause"),
        Binding("right", "step(1)", "Step"),
        Binding("left", "step(-1)", "Back a step"),
        Binding("home", "jump_to(0)", "Start"),
        Binding("end", "jump_to(-1)", "End"),
        Binding("plus,=", "speed(2)", "Faster"),
        Binding("minus", "speed(0.5)", "Slower"),
        Binding("g", "ask_seq", "Go to seq"),
        Binding("slash", "focus_log_filter", "Filter log"),
    ]

    def __init__(self, backend: Backend, session_id: str) -> None:
        super().__init__(id="session-screen")
        self.backend = backend
        self.session_id = session_id
        self.events: list[SessionEvent] = []
        self.position = 0  # events applied: the state shown is fold(events[:position])
        self.state = SessionState()
        self.live = False
        self.playing = False
        self.speed = 10.0  # events per second when playing
        self._bars: dict[int, ProgressBar] = {}
        self._log_filter = ""
        self._log_seqs: list[int] = []  # the seqs of the log's rows, in order
        self._log_at = 0  # the position the log was last drawn at
        self._render_timer: Any = None  # a live draw pending
        self._node_rows: dict[str, tuple[str, ...]] = {}  # the nodes table's cells, by node
        self._node_columns: list[Any] = []
        self._player: Any = None
        self._checkpoints: dict[int, SessionState] = {0: SessionState()}
        self._outage = False  # the connection watch put the banner up
        # when the store recorded the session's latest event: a live session quiet for
        # longer than JETSOURCE_SESSIONS__INTERRUPTED_AFTER_S is interrupted, as the
        # list and `sessions show` say (the header said "active" for ever)
        self._last_recorded_ns = 0

    def compose(self) -> ComposeResult:
        yield Banner(id="banner")
        yield Static(id="header")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Label(Text("Levels", style="bold"))
                yield VerticalScroll(id="levels")
                yield Label(Text("Failures", style="bold"))
                yield Static(id="failures")
                yield Label(Text("Queue / scanner / watcher", style="bold"))
                yield Static(id="stats")
            with Vertical(id="right"):
                yield Label(Text("Nodes", style="bold"))
                nodes: DataTable[Any] = DataTable(id="nodes", cursor_type="row")
                yield nodes
        yield SafeInput(placeholder="filter the log by type (e.g. provider_)", id="log-filter")
        log: DataTable[Any] = DataTable(id="log", cursor_type="row", zebra_stripes=True)
        yield log
        yield SafeInput(placeholder="go to seq", id="seq-input")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Banner).clear()
        self.query_one("#seq-input", Input).display = False
        self._node_columns = self.query_one("#nodes", DataTable).add_columns(
            "node", "level", "status", "provider", "attempts", "error"
        )
        self.query_one("#log", DataTable).add_columns("seq", "ts", "type", "data")
        # No widget holds the keys: ←/→, Home, End and Space drive the replay.
        self.set_focus(None)
        self.load()
        self.set_interval(1.0, self._watch_connection)

    def _watch_connection(self) -> None:
        """While following live: say so when NATS is away (the subscription is silent
        then, and LIVE would be a lie), and follow anew from the last event shown when
        the client gave up reconnecting."""
        if not self.live:
            return
        self.render_header()  # active -> interrupted after a quiet spell, and back
        state = self.backend.connection()
        banner = self.query_one(Banner)
        if state in ("up", "none"):
            if self._outage:
                self._outage = False
                banner.clear()
            return
        self._outage = True
        banner.show(
            f"NATS at {self.backend.settings.nats_url()} is not reachable: the live "
            "follow carries on from the last event shown when it is back"
        )
        if state == "closed":
            self.follow()

    # -- loading and following ----------------------------------------------------------

    @work(exclusive=True, group="session-load")
    @while_shown
    async def load(self) -> None:
        banner = self.query_one(Banner)
        try:
            validate_aggregate_id(self.session_id, "session id")
        except ValidationError as exc:  # bad input: said once, never retried
            banner.show(f"{exc} (Esc goes back)")
            self.query_one("#header", Static).update(Text("no such session", style="bold red"))
            return
        # a session of tens of thousands of events takes seconds to read: say so (the
        # screen was blank until it was drawn)
        self.query_one("#header", Static).update(
            Text.assemble(
                ("reading the session from the ledger…", "dim"), (f"  {self.session_id}", "dim")
            )
        )
        while True:
            try:
                recorded = await self.backend.events(self.session_id)
            except StackDown as exc:
                banner.show(f"{exc} — retrying")
                await asyncio.sleep(2.0)
                continue
            if recorded:
                break
            # not begun yet (the emitter flushes in the background), or pruned: say
            # so rather than draw an empty session as LIVE, and look again
            banner.show(
                f"no session {clean(self.session_id, COMMAND_WIDTH)!r} in the ledger (not begun "
                "yet, or pruned) — looking again every 2s; Esc goes back"
            )
            self.query_one("#header", Static).update(Text("not found", style="bold yellow"))
            await asyncio.sleep(2.0)
        try:
            not_a_session(self.session_id, recorded)
        except SessionNotFoundError as exc:  # another kind's process: drawn as LIVE
            banner.show(f"{exc} (Esc goes back)")
            self.query_one("#header", Static).update(Text("no such session", style="bold red"))
            return
        banner.clear()
        self.events = [r.event for r in recorded]
        self._last_recorded_ns = max(r.recorded_ns for r in recorded)
        self._checkpoints = {0: SessionState()}
        self.position, self.state = 0, SessionState()
        self.state = self._state_at(len(self.events))
        self.position = len(self.events)
        self.live = self.state.status == ACTIVE
        self.render_all(rebuild_log=True)
        if self.live:
            self.follow()

    @work(exclusive=True, group="session-follow")
    @while_shown
    async def follow(self) -> None:
        banner = self.query_one(Banner)
        while self.live:
            try:
                after = self.events[-1].seq if self.events else 0
                async for r in self.backend.follow(self.session_id, after):
                    if not self._outage:
                        banner.clear()
                    self.events.append(r.event)
                    # the query reader's follow (WatchSession) says no recording time:
                    # the event came now (left at 0, a session followed through the
                    # query service read interrupted INTERRUPTED_AFTER_S after it opened,
                    # however many events came)
                    recorded = r.recorded_ns or now_ns()
                    self._last_recorded_ns = max(self._last_recorded_ns, recorded)
                    if self.position == len(self.events) - 1:  # at the live edge
                        self.position += 1
                        self.state = evolve(self.state, r.event)
                        self._checkpoint(self.position, self.state)
                    self._draw_soon()
                    # a burst arrives from a buffer without ever waiting: let keys and
                    # redraws in between (thousands of events froze the UI for seconds)
                    await asyncio.sleep(0)
                self.live = False
                self._draw_now()
            except StackDown as exc:
                banner.show(f"{exc} — retrying")
                await asyncio.sleep(2.0)

    def _draw_soon(self) -> None:
        """Live events are drawn at most every LIVE_DRAW_S, all those since the last
        draw at once: a draw per event fell behind a busy session."""
        if self._render_timer is None:
            self._render_timer = self.set_timer(LIVE_DRAW_S, self._draw_now)

    def _draw_now(self) -> None:
        if self._render_timer is not None:
            self._render_timer.stop()
            self._render_timer = None
        self.render_all()

    # -- replay ----------------------------------------------------------------------------

    def _go(self, position: int) -> None:
        position = max(0, min(position, len(self.events)))
        if position == self.position:
            return
        self.state = self._state_at(position)
        self.position = position
        self.render_all()

    def _checkpoint(self, position: int, state: SessionState) -> None:
        if position % CHECKPOINT_EVERY == 0:
            self._checkpoints[position] = state

    def _state_at(self, position: int) -> SessionState:
        """fold(events[:position]), from the nearest state at or before it: the shown
        one going forward, else a checkpoint (states are immutable, so keeping one every
        CHECKPOINT_EVERY events is cheap). A step back in a session of thousands of
        events folded it whole from the start: half a second a key at 10,000 events."""
        if self.position <= position:
            at, state = self.position, self.state
        else:
            at = max(p for p in self._checkpoints if p <= position)
            state = self._checkpoints[at]
        for i in range(at, position):
            state = evolve(state, self.events[i])
            self._checkpoint(i + 1, state)
        return state

    def action_step(self, delta: int) -> None:
        self._go(self.position + delta)

    def action_jump_to(self, position: int) -> None:
        self._go(len(self.events) if position < 0 else position)

    def action_speed(self, factor: float) -> None:
        self.speed = max(0.5, min(1000.0, self.speed * factor))
        self.render_header()

    def action_play(self) -> None:
        self.playing = not self.playing
        if self.playing:
            if self.position >= len(self.events):
                self._go(0)
            self._player = self.set_timer(1 / self.speed, self._tick)
        self.render_header()

    def _tick(self) -> None:
        if not self.playing:
            return
        if self.position >= len(self.events):
            self.playing = False
            self.render_header()
            return
        self._go(self.position + 1)
        self._player = self.set_timer(1 / self.speed, self._tick)

    def action_ask_seq(self) -> None:
        box = self.query_one("#seq-input", Input)
        box.display = True
        box.focus()

    def action_focus_log_filter(self) -> None:
        self.query_one("#log-filter", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "seq-input":
            event.input.display = False
            self.set_focus(None)
            try:
                seq = int(event.input.value)
            except ValueError:
                # cut: a pasted page of text was the whole notification, over the screen
                what = clean(event.input.value, CELL_WIDTH)
                self.notify(f"not a seq: {what!r}", severity="error")
                return
            self.jump_to_seq(seq)
        elif event.input.id == "log-filter":
            self._log_filter = event.input.value.strip()
            self.render_log(rebuild=True)
            self.set_focus(None)

    def jump_to_seq(self, seq: int) -> None:
        """Show the state right after the event with this seq."""
        self._go(sum(1 for e in self.events if e.seq <= seq))

    def action_back(self) -> None:
        # Esc in the log filter or the seq box leaves the box, not the session
        focused = self.focused
        if isinstance(focused, Input):
            if focused.id == "seq-input":
                focused.display = False
            self.set_focus(None)
            return
        self.playing = False
        self.app.pop_screen()

    # -- drawing -------------------------------------------------------------------------

    def render_all(self, rebuild_log: bool = False) -> None:
        self.render_header()
        self.render_levels()
        self.render_nodes()
        self.render_failures()
        self.render_stats()
        self.render_log(rebuild=rebuild_log)

    def render_header(self) -> None:
        s = self.state
        mode = "LIVE" if self.live else ("PLAYING" if self.playing else "REPLAY")
        # status, position and mode first: a long command must not push them off screen
        header = Text.assemble(
            styled(s.status if not self.live else self._live_status()),
            f"  seq {s.seq}/{self.events[-1].seq if self.events else 0}",
            f"  {mode}",
            f"  x{self.speed:g}/s" if not self.live else "",
            "  ",
            safe(s.command or "?", COMMAND_WIDTH, "bold"),
            (f"  {self.session_id}", "dim"),
        )
        header.no_wrap, header.overflow = True, "ellipsis"
        self.query_one("#header", Static).update(header)

    def _live_status(self) -> str:
        """The status of a session followed live: active, or interrupted once nothing
        was recorded for ``interrupted_after_s`` (``session_status``, the list's rule)."""
        quiet_s = self.backend.settings.sessions.interrupted_after_s
        return session_status(ACTIVE, self._last_recorded_ns, now_ns(), quiet_s)

    def render_levels(self) -> None:
        box = self.query_one("#levels", VerticalScroll)
        shown = {lv.level for lv in self.state.levels}
        for number in list(self._bars):
            if number not in shown:
                self._bars.pop(number).parent.remove()  # type: ignore[union-attr]
        for lv in self.state.levels:
            bar = self._bars.get(lv.level)
            if bar is None:
                bar = ProgressBar(total=max(lv.total, 1), show_eta=False, id=f"level-{lv.level}")
                row = Horizontal(Label(f"level {lv.level} "), bar, classes="level-row")
                box.mount(row)
                self._bars[lv.level] = bar
            bar.update(total=max(lv.total, lv.done, 1), progress=lv.done)

    def render_nodes(self) -> None:
        """Changed cells only: the table is redrawn on every event of a live session."""
        table = self.query_one("#nodes", DataTable)
        rows: dict[str, tuple[str, ...]] = {
            n.node_id: (
                clean(n.node_id, CELL_WIDTH),
                "" if n.level is None else str(n.level),
                n.status,
                clean(n.provider, CELL_WIDTH),
                str(n.attempts or ""),
                clean(n.error, ERROR_WIDTH),
            )
            for n in self.state.nodes
        }
        if list(rows) != list(self._node_rows):
            table.clear()
            for key, row in rows.items():
                table.add_row(*self._node_cells(row), key=key)
        else:
            for key, row in rows.items():
                old = self._node_rows[key]
                cells = self._node_cells(row)
                for column, value in enumerate(row):
                    if value != old[column]:
                        table.update_cell(key, self._node_columns[column], cells[column])
        self._node_rows = rows

    @staticmethod
    def _node_cells(row: tuple[str, ...]) -> list[Any]:
        node, level, status, provider, attempts, error = row
        return [Text(node), level, styled(status), Text(provider), attempts,
                Text(error, style="red")]  # fmt: skip

    def render_failures(self) -> None:
        failures = self.state.failures
        lines = Text(no_wrap=True, overflow="ellipsis")
        hidden = len(failures) - (FAILURE_LINES - 1) if len(failures) > FAILURE_LINES else 0
        if hidden:
            lines.append(f"… {hidden} earlier (all in the nodes table and the log)\n", "dim")
        for f in failures[hidden:]:
            who = clean(f.node_id, CELL_WIDTH) or "generation"
            lines.append(f"seq {f.seq} {clean(f.type, CELL_WIDTH)} {who}: ", style="bold red")
            lines.append(f"{clean(f.error, ERROR_WIDTH)}\n")
        self.query_one("#failures", Static).update(lines or Text("none", style="dim"))

    def render_stats(self) -> None:
        s = self.state
        parts = []
        if s.queue:
            parts.append("queue " + " ".join(f"{k}={v}" for k, v in sorted(s.queue.items())))
        if s.scan:
            total = s.scan.get("files_total")
            done = s.scan.get("files_scanned", 0)
            of = f"/{total}" if total else ""
            parts.append(f"scan {s.scan.get('status', '')} {done}{of} files")
        if s.watch:
            parts.append(
                f"watch {len(s.watch.get('paths', []))} paths, {s.watch.get('changes', 0)} "
                f"changes, {s.watch.get('batches', 0)} batches"
            )
        stats = Text("\n".join(clean(p, ERROR_WIDTH) for p in parts) or "none")
        self.query_one("#stats", Static).update(stats)

    def _log_row(self, e: SessionEvent) -> None:
        data = json.dumps(e.data, ensure_ascii=False, separators=(",", ":"))
        self.query_one("#log", DataTable).add_row(
            str(e.seq),
            clean(e.ts[11:], 16),
            safe(e.type, CELL_WIDTH),
            safe(data, LOG_DATA_WIDTH),
            key=str(e.seq),
        )

    def _logged(self, e: SessionEvent) -> bool:
        return not self._log_filter or self._log_filter in e.type

    def _log_tail(self) -> list[SessionEvent]:
        """The last LOG_WINDOW events of the filter up to the position (read backwards)."""
        out: list[SessionEvent] = []
        for i in range(self.position - 1, -1, -1):
            if len(out) == LOG_WINDOW:
                break
            if self._logged(self.events[i]):
                out.append(self.events[i])
        out.reverse()
        return out

    def render_log(self, rebuild: bool = False) -> None:
        """The log ends at the position and holds the events of the filter before it,
        LOG_WINDOW to LOG_ROWS of them. A step, live events or a short jump add or
        remove the rows that change (only the events since the last draw are looked
        at: a live session of thousands of events is not scanned again on each one);
        a long jump, a step back past half the window, or a log grown past LOG_ROWS
        draws the last LOG_WINDOW anew."""
        table = self.query_one("#log", DataTable)
        shown = self._log_seqs
        half = LOG_WINDOW // 2
        newer: list[SessionEvent] = []
        gone = 0
        if rebuild:
            pass
        elif self.position >= self._log_at:
            newer = [e for e in self.events[self._log_at : self.position] if self._logged(e)]
        else:
            edge = self.events[self.position - 1].seq if self.position else 0
            while gone < len(shown) and shown[-1 - gone] > edge:
                gone += 1
        kept = len(shown) - gone
        if (
            rebuild
            or len(newer) >= LOG_WINDOW
            or len(shown) + len(newer) > LOG_ROWS
            or gone >= LOG_WINDOW
            or (gone and kept < half and self.position > kept)
        ):
            table.clear()
            shown, gone, newer = [], 0, self._log_tail()
        for _ in range(gone):
            table.remove_row(str(shown.pop()))
        for e in newer:
            self._log_row(e)
            shown.append(e.seq)
        self._log_seqs = shown
        self._log_at = self.position
        if newer or gone:
            table.move_cursor(row=table.row_count - 1)
