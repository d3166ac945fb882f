"""`jetsource tui`: the Textual application fronting jetsource's domains.

Keys: s sessions, p processes, c contexts, m messages (omni), d dead letters, ? help
(every key of the screen), q quit (each screen's main keys in its footer).
Keyboard first, mouse optional, plain terminal output (works over SSH). A stack that
is down shows a banner and is retried; nothing crashes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.tui.backend import Backend
from jetsource.tui.domain_views import DeadLettersScreen, OmniScreen
from jetsource.tui.other_views import ContextsScreen, ProcessesScreen
from jetsource.tui.session_view import SessionScreen, SessionsScreen


class JetsourceTui(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "jetsource"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "sessions", "Sessions"),
        Binding("p", "processes", "Processes"),
        Binding("c", "contexts", "Contexts"),
        Binding("m", "omni", "Messages"),
        Binding("d", "dead_letters", "Dead letters"),
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, backend: Backend, refresh_s: float = 2.0, open_session: str = "") -> None:
        super().__init__()
        self.backend = backend
        self.refresh_s = refresh_s
        self.open_session = open_session

    def on_mount(self) -> None:
        self.push_screen(SessionsScreen(self.backend, self.refresh_s))
        if self.open_session:
            self.push_screen(SessionScreen(self.backend, self.open_session))

    def _switch(self, screen: Any) -> None:
        while len(self.screen_stack) > 2:
            self.pop_screen()
        if len(self.screen_stack) == 2:
            if type(self.screen) is type(screen):
                # Already there: keep it (its cursor, its filter). A second one with
                # the same id ended the TUI with a DuplicateIds traceback (`s` on the
                # sessions list, `p` twice, `s` from a session opened from the list).
                return
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def action_sessions(self) -> None:
        self._switch(SessionsScreen(self.backend, self.refresh_s))

    def action_processes(self) -> None:
        self._switch(ProcessesScreen(self.backend, self.refresh_s))

    def action_contexts(self) -> None:
        self._switch(ContextsScreen(self.backend))

    def action_omni(self) -> None:
        self._switch(OmniScreen(self.backend, self.refresh_s))

    def action_dead_letters(self) -> None:
        self._switch(DeadLettersScreen(self.backend, self.refresh_s))

    def action_help(self) -> None:
        """Toggle the panel listing every key of the screen (the footer has room for
        the main ones only)."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    async def on_unmount(self) -> None:
        await self.backend.close()


def run(
    settings: SessionsAppSettings | None = None,
    query_address: str | None = None,
    open_session: str = "",
    omni_address: str | None = None,
) -> None:
    """``omni_address`` unset: the ingress's gRPC port from JETSOURCE_INGEST__GRPC_HOST /
    __GRPC_PORT (127.0.0.1:50054); the dead letters are read with the projector's
    settings (JETSOURCE_PROJECTOR__DLQ_STREAM ...), loaded when that screen first reads."""
    settings = settings or SessionsAppSettings.load()
    backend = Backend(settings, query_address, omni_address=omni_address)
    JetsourceTui(backend, open_session=open_session).run()


__all__ = ["JetsourceTui", "run"]
