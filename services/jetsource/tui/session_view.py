"""The sessions list and one session's progress view (live follow or replay)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, ProgressBar, Static

from jetsource.domains.sessions.format import SessionEvent, format_ts
from jetsource.domains.sessions.progress import (
    COMPLETE,
    FAILED,
    RUNNING,
    SKIPPED,
    WAITING,
    SessionState,
    evolve,
    fold,
)
from jetsource.domains.sessions.record import ACTIVE, STATUSES
from jetsource.tui.backend import Backend, StackDown
from jetsource.tui.lifecycle import while_shown

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


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


class Banner(Static):
    """A clear line when the stack is down (hidden while all is well)."""

    def show(self, message: str) -> None:
        self.update(Text(f"⚠ {message}", style="bold white on dark_red"))
        self.display = True

    def clear(self) -> None:
        self.display = False


class SessionsScreen(Screen[None]):
    """Every session: status, command, start, duration, event count; filter by text
    or ``status:<name>``; Enter opens one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("/", "focus_filter", "Filter"),
        Binding("r", "reload", "Reload"),
        Binding("escape", "focus_table", "Table", show=False),
    ]

    def __init__(self, backend: Backend, refresh_s: float = 2.0) -> None:
        super().__init__(id="sessions-screen")
        self.backend = backend
        self.refresh_s = refresh_s
        self.loaded = 0
        self._reading = False  # how many times the list was read (tests wait on it)

    def compose(self) -> ComposeResult:
        yield Banner(id="banner")
        yield Label(Text("Sessions", style="bold"), id="title")
        yield Input(placeholder="filter: text, or status:active|completed|failed|interrupted",
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
        self.set_interval(self.refresh_s, self._tick_reload)

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#sessions", DataTable).focus()

    def action_reload(self) -> None:
        self.reload()

    def _tick_reload(self) -> None:
        # A read still under way (a slow or absent stack) is left to finish: cancelling
        # it for the next tick would never let one complete.
        if not self._reading:
            self.reload()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.reload()
            self.action_focus_table()

    def _filter(self) -> tuple[str, tuple[str, ...]]:
        text = self.query_one("#filter", Input).value.strip().lstrip("/")
        statuses, words = [], []
        for part in text.split():
            if part.startswith("status:") and part[7:] in STATUSES:
                statuses.append(part[7:])
            else:
                words.append(part)
        return " ".join(words), tuple(statuses)

    @work(group="sessions-list")
    @while_shown
    async def reload(self) -> None:
        if self._reading:
            return
        self._reading = True
        try:
            await self._reload()
        finally:
            self._reading = False

    async def _reload(self) -> None:
        search, statuses = self._filter()
        banner = self.query_one(Banner)
        try:
            records = await self.backend.list_sessions(search, statuses)
        except StackDown as exc:
            banner.show(f"{exc} — retrying every {self.refresh_s:g}s")
            return
        banner.clear()
        table = self.query_one("#sessions", DataTable)
        keep = table.cursor_row
        table.clear()
        for r in records:
            duration = r.duration_s
            table.add_row(
                r.session_id,
                styled(r.status),
                Text(r.command),
                format_ts(r.started_ns) if r.started_ns else "",
                "" if duration is None else f"{duration:.1f}s",
                str(r.event_count),
                key=r.session_id,
            )
        if records:
            table.move_cursor(row=min(keep, len(records) - 1))
        self.loaded += 1

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
        self._player: Any = None

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
        yield Input(placeholder="filter the log by type (e.g. provider_)", id="log-filter")
        log: DataTable[Any] = DataTable(id="log", cursor_type="row", zebra_stripes=True)
        yield log
        yield Input(placeholder="go to seq", id="seq-input")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Banner).clear()
        self.query_one("#seq-input", Input).display = False
        self.query_one("#nodes", DataTable).add_columns(
            "node", "level", "status", "provider", "attempts", "error"
        )
        self.query_one("#log", DataTable).add_columns("seq", "ts", "type", "data")
        # No widget holds the keys: ←/→, Home, End and Space drive the replay.
        self.set_focus(None)
        self.load()

    # -- loading and following ----------------------------------------------------------

    @work(exclusive=True, group="session-load")
    @while_shown
    async def load(self) -> None:
        banner = self.query_one(Banner)
        while True:
            try:
                recorded = await self.backend.events(self.session_id)
                break
            except StackDown as exc:
                banner.show(f"{exc} — retrying")
                await asyncio.sleep(2.0)
        banner.clear()
        self.events = [r.event for r in recorded]
        self.position = len(self.events)
        self.state = fold(self.events)
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
                    banner.clear()
                    self.events.append(r.event)
                    if self.position == len(self.events) - 1:  # at the live edge
                        self.position += 1
                        self.state = evolve(self.state, r.event)
                        self.render_all(appended=r.event)
                self.live = False
                self.render_header()
            except StackDown as exc:
                banner.show(f"{exc} — retrying")
                await asyncio.sleep(2.0)

    # -- replay ----------------------------------------------------------------------------

    def _go(self, position: int) -> None:
        position = max(0, min(position, len(self.events)))
        if position == self.position:
            return
        if position > self.position:
            for e in self.events[self.position : position]:
                self.state = evolve(self.state, e)
        else:
            self.state = fold(self.events[:position])
        self.position = position
        self.render_all(rebuild_log=True)

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
                self.notify(f"not a seq: {event.input.value!r}", severity="error")
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
        self.playing = False
        self.app.pop_screen()

    # -- drawing -------------------------------------------------------------------------

    def render_all(self, rebuild_log: bool = False, appended: SessionEvent | None = None) -> None:
        self.render_header()
        self.render_levels()
        self.render_nodes()
        self.render_failures()
        self.render_stats()
        if appended is not None and not rebuild_log:
            self._log_row(appended)
        else:
            self.render_log(rebuild=True)

    def render_header(self) -> None:
        s = self.state
        mode = "LIVE" if self.live else ("PLAYING" if self.playing else "REPLAY")
        header = Text.assemble(
            (f"{s.command or '?'} ", "bold"),
            (f"{self.session_id}  ", "dim"),
            styled(s.status if not self.live else "active"),
            f"  seq {s.seq}/{self.events[-1].seq if self.events else 0}",
            f"  {mode}",
            f"  x{self.speed:g}/s" if not self.live else "",
        )
        self.query_one("#header", Static).update(header)

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
        table = self.query_one("#nodes", DataTable)
        table.clear()
        for n in self.state.nodes:
            table.add_row(
                Text(n.node_id),
                "" if n.level is None else str(n.level),
                styled(n.status),
                Text(n.provider),
                str(n.attempts or ""),
                Text(n.error, style="red"),
                key=n.node_id,
            )

    def render_failures(self) -> None:
        lines = Text()
        for f in self.state.failures:
            who = f.node_id or "generation"
            lines.append(f"seq {f.seq} {f.type} {who}: ", style="bold red")
            lines.append(f"{f.error}\n")
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
        self.query_one("#stats", Static).update(Text("\n".join(parts) or "none"))

    def _log_row(self, e: SessionEvent) -> None:
        if self._log_filter and self._log_filter not in e.type:
            return
        data = json.dumps(e.data, ensure_ascii=False, separators=(",", ":"))
        self.query_one("#log", DataTable).add_row(
            str(e.seq), e.ts[11:], Text(e.type), Text(data[:200]), key=str(e.seq)
        )

    def render_log(self, rebuild: bool = False) -> None:
        table = self.query_one("#log", DataTable)
        if rebuild:
            table.clear()
        for e in self.events[: self.position]:
            self._log_row(e)
        if table.row_count:
            table.move_cursor(row=table.row_count - 1)
