"""The other domains behind the TUI: the process tree of the ledger (live) and a
context's state with a version/time scrubber over its history."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static, Tree

from jetsource.core.clock import TIME_EXAMPLE, format_rfc3339_ns, parse_time_ns
from jetsource.domains.sessions.ledger import ProcessSummary
from jetsource.domains.sessions.record import session_status
from jetsource.tui.backend import Backend, StackDown
from jetsource.tui.lifecycle import Banner, Refreshing, one_read, while_shown
from jetsource.tui.session_view import CELL_WIDTH, COMMAND_WIDTH, SessionScreen, styled
from jetsource.tui.text import SafeInput, clean, safe

# Deepest a process is drawn nested in the tree; deeper ones are drawn at this depth,
# in order, each saying how deep it is (Textual's Tree lays out its lines by recursion:
# a chain of ~1,000 nested processes ended the TUI with a RecursionError).
TREE_DEPTH = 100


class ProcessesScreen(Refreshing):
    """Every process of the ledger as a tree (sessions and what nests under them),
    with statuses, refreshed live."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reload", "Reload"),
        Binding("o", "open", "Open session"),
    ]

    def __init__(self, backend: Backend, refresh_s: float = 2.0) -> None:
        super().__init__(refresh_s, "processes-screen")
        self.backend = backend
        self._drawn: tuple[Any, ...] | None = None  # what the tree shows, to skip a no-op redraw

    def compose(self) -> ComposeResult:
        yield Banner(id="banner")
        yield Label(Text("Processes", style="bold"), id="title")
        tree: Tree[str] = Tree("ledger", id="tree")
        yield tree
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Banner).clear()
        self.query_one("#tree", Tree).root.expand()
        self.reload()
        self.set_interval(self.refresh_s, self.tick)

    def action_reload(self) -> None:
        self.reload()

    def action_open(self) -> None:
        """Open the session the selected process belongs to (its root)."""
        node = self.query_one("#tree", Tree).cursor_node
        while node is not None and node.parent is not None and node.parent.data is not None:
            node = node.parent
        if node is not None and node.data:
            self.app.push_screen(SessionScreen(self.backend, str(node.data)))

    @work(group="processes")
    @one_read
    async def reload(self) -> None:
        banner = self.query_one(Banner)
        try:
            procs = await self.backend.processes()
        except StackDown as exc:
            banner.show(f"{exc} — retrying every {self.refresh_s:g}s")
            return
        banner.clear()
        tree: Tree[str] = self.query_one("#tree", Tree)
        children: dict[str, list[ProcessSummary]] = {}
        roots = []
        for p in procs.values():
            if p.parent and p.parent in procs:
                children.setdefault(p.parent, []).append(p)
            else:
                roots.append(p)
        quiet = self.backend.settings.sessions.interrupted_after_s
        now = time.time_ns()

        def label(p: ProcessSummary) -> Text:
            status = p.status
            if p.kind == "session" and not p.parent:
                status = session_status(
                    "active" if status == "running" else status, p.last_recorded_ns, now, quiet
                )
            return Text.assemble(
                safe(p.name or p.process_id, COMMAND_WIDTH, "bold"),
                (f" [{clean(p.kind or '?', CELL_WIDTH)}] ", "dim"),
                styled(status),
                (f"  {clean(p.process_id)}", "dim"),
            )

        # (depth, process id, label) in drawing order
        rows: list[tuple[int, str, Text]] = []
        seen: set[str] = set()

        def walk(top: ProcessSummary) -> None:
            # A loop, not a recursion: a chain of processes nested deeper than Python's
            # recursion limit (~1,000) ended the TUI with a RecursionError.
            stack = [(top, 0)]
            while stack:
                p, depth = stack.pop()
                if p.process_id in seen:
                    continue
                seen.add(p.process_id)
                text = label(p)
                if depth > TREE_DEPTH:
                    text.append(f"  (nested {depth} deep)", style="dim")
                rows.append((min(depth, TREE_DEPTH), p.process_id, text))
                kids = sorted(children.get(p.process_id, []), key=lambda c: c.started_ns)
                stack.extend((c, depth + 1) for c in reversed(kids))

        for p in sorted(roots, key=lambda r: r.started_ns, reverse=True):
            walk(p)
        # Processes whose parents name each other in a loop (a raw writer's) reach no
        # root: drawn from the loop's oldest, rather than left out of the tree.
        for p in sorted(procs.values(), key=lambda r: (r.started_ns, r.process_id)):
            if p.process_id not in seen:
                walk(p)
        drawn = tuple((d, pid, text.plain) for d, pid, text in rows)
        if drawn != self._drawn:
            self._redraw(tree, rows)
            self._drawn = drawn
        self.loaded += 1

    def _redraw(self, tree: Tree[str], rows: list[tuple[int, str, Text]]) -> None:
        """Draw the tree anew, keeping what the operator did to it: the nodes they
        collapsed stay collapsed and the cursor stays on its process (a redraw every
        few seconds that reset both would make the tree impossible to walk)."""
        collapsed: set[str] = set()
        stack = list(tree.root.children)
        while stack:
            node = stack.pop()
            if node.data is not None and node.children and not node.is_expanded:
                collapsed.add(node.data)
            stack.extend(node.children)
        at = tree.cursor_node.data if tree.cursor_node is not None else None
        tree.clear()
        path: list[Any] = [tree.root]
        cursor = None
        for depth, pid, text in rows:
            del path[depth + 1 :]
            has_kids = False  # set when the next row nests under this one
            node = path[-1].add(text, data=pid, expand=pid not in collapsed, allow_expand=has_kids)
            if len(path) > 1:
                path[-1].allow_expand = True
            path.append(node)
            if pid == at:
                cursor = node
        tree.root.expand()
        if cursor is not None:  # once the tree has laid out its new lines
            tree.call_after_refresh(tree.move_cursor, cursor, animate=False)


class ContextsScreen(Screen[None]):
    """A story's current state, and a scrubber over its history: ←/→ one version back
    or forward (GetContextAtVersion), t a time (GetContextAtTime), End the latest."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "scrub(-1)", "Older"),
        Binding("right", "scrub(1)", "Newer"),
        Binding("end", "latest", "Latest"),
        Binding("t", "ask_time", "At time"),
        Binding("slash", "focus_id", "Context id"),
        Binding("escape", "blur", "Leave input", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("down", "line(1)", "Scroll down", show=False),
        Binding("up", "line(-1)", "Scroll up", show=False),
    ]
    RETRY_S = 2.0
    # No widget takes the keys when the screen opens: the app's auto-focus gave them
    # to the id box, so s, p, m, d and q were typed into it instead of acted on.
    AUTO_FOCUS = ""

    def __init__(self, backend: Backend) -> None:
        super().__init__(id="contexts-screen")
        self.backend = backend
        self.context_id = ""
        self.latest = 0
        self.version = 0
        # the request on screen: what a retry repeats while the query service is away
        self._request: tuple[Any, tuple[Any, ...]] | None = None
        self._retry: Any = None

    def compose(self) -> ComposeResult:
        yield Banner(id="banner")
        yield Label(Text("Contexts", style="bold"), id="title")
        yield SafeInput(placeholder="context id, then Enter", id="context-id")
        yield Static(id="scrubber")
        # a story holds thousands of decisions: the state scrolls (↑/↓, PgUp/PgDn)
        with VerticalScroll(id="context-scroll"):
            yield Static(id="context")
        yield SafeInput(placeholder=f"time: {TIME_EXAMPLE}", id="time-input")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Banner).clear()
        self.query_one("#time-input", Input).display = False
        self.set_focus(None)  # keys go to the screen and the app; "/" to type an id

    def action_focus_id(self) -> None:
        self.query_one("#context-id", Input).focus()

    def action_blur(self) -> None:
        self.set_focus(None)

    def action_page(self, direction: int) -> None:
        box = self.query_one("#context-scroll", VerticalScroll)
        box.scroll_to(y=box.scroll_y + direction * max(box.size.height - 1, 1), animate=False)

    def action_line(self, direction: int) -> None:
        box = self.query_one("#context-scroll", VerticalScroll)
        box.scroll_to(y=box.scroll_y + direction, animate=False)

    def action_ask_time(self) -> None:
        box = self.query_one("#time-input", Input)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.set_focus(None)
        if event.input.id == "context-id":
            # "/" that focused the box may land in it too; ids never hold one
            self.context_id = event.input.value.strip().lstrip("/")
            event.input.value = self.context_id
            self._asking(self.show_latest)
        elif event.input.id == "time-input":
            event.input.display = False
            # The one grammar of times a person writes (``ctx show --at``'s): RFC 3339,
            # Z or an offset, up to nanoseconds, so an event's recorded_at as `ctx
            # events` prints it is that event's version. (It read the session log's
            # form: exactly milliseconds, which put an event's own time before it.)
            text = event.input.value
            try:
                at = parse_time_ns(text)
            except ValueError as exc:  # it quotes the input: cut, as every notice is
                self.notify(
                    clean(f"time {text!r}: {exc}; e.g. {TIME_EXAMPLE}", 300), severity="error"
                )
                return
            self._asking(self.show_at_time, at)

    def action_scrub(self, delta: int) -> None:
        if self.context_id and self.latest:
            target = max(1, min(self.latest, self.version + delta))
            if target != self.version:
                self._asking(self.show_version, target)

    def action_latest(self) -> None:
        if self.context_id:
            self._asking(self.show_latest)

    def _asking(self, worker: Any, *args: Any) -> None:
        """Note the request now on screen (a retry repeats it), then make it."""
        if self._retry is not None:
            self._retry.stop()
            self._retry = None
        self._request = (worker, args)
        worker(*args)

    def _again(self) -> None:
        self._retry = None
        if self._request is not None:
            worker, args = self._request
            worker(*args)

    async def _ask(self, call: Any) -> Any:
        banner = self.query_one(Banner)
        try:
            answer = await call
        except StackDown as exc:
            # asked again on its own until it answers: the operator need not press a key
            banner.show(f"{exc} — retrying every {self.RETRY_S:g}s")
            if self._retry is None:
                self._retry = self.set_timer(self.RETRY_S, self._again)
            return None
        except LookupError as exc:
            banner.clear()
            self.notify(clean(exc, 300), severity="error")
            return None
        banner.clear()
        return answer

    @work(exclusive=True, group="context")
    @while_shown
    async def show_latest(self) -> None:
        got = await self._ask(self.backend.context(self.context_id))
        if got is not None:
            self.latest = self.version = int(got.context.version)
            self._draw(got.context, "latest")

    @work(exclusive=True, group="context")
    @while_shown
    async def show_version(self, version: int) -> None:
        got = await self._ask(self.backend.context_at_version(self.context_id, version))
        if got is not None:
            self.version = int(got.context.version)
            self._draw(got.context, f"at version {version}")

    @work(exclusive=True, group="context")
    @while_shown
    async def show_at_time(self, at_ns: int) -> None:
        got = await self._ask(self.backend.context_at_time(self.context_id, at_ns))
        if got is not None:
            self.version = int(got.context.version)
            self._draw(got.context, f"at {format_rfc3339_ns(at_ns)}")

    def _draw(self, ctx: Any, how: str) -> None:
        width = 40
        filled = round(width * self.version / self.latest) if self.latest else 0
        self.query_one("#scrubber", Static).update(
            Text.assemble(
                ("█" * filled, "cyan"),
                ("░" * (width - filled), "dim"),
                f"  version {self.version} of {self.latest} ({how})",
            )
        )
        out = Text()
        out.append(f"{clean(ctx.title)}\n", style="bold")
        out.append(f"status {clean(ctx.status)}  tags {clean(', '.join(ctx.tags))}\n")
        if ctx.description:
            # a description may span lines; each line is cleaned of what could redraw the screen
            for line in ctx.description.splitlines():
                out.append(f"{clean(line)}\n")
        out.append(f"\nDecisions ({len(ctx.decisions)})\n", style="bold")
        for d in ctx.decisions:
            gone = f" (superseded by {clean(d.superseded_by)})" if d.superseded_by else ""
            out.append(f"  {clean(d.id)}  {clean(d.title)}{gone}\n")
        out.append(f"\nSubtasks ({len(ctx.subtasks)})\n", style="bold")
        for st in ctx.subtasks:
            out.append(f"  {clean(st.id)}  {clean(st.title)}  {st.progress}%\n")
        self.query_one("#context", Static).update(out)
