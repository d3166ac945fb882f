"""A screen's workers can outlive its widgets for a moment: a read that returns while
the screen is being closed (popped, or the app quitting) finds its widgets gone.

``while_shown`` lets such a worker end quietly then, and only then: a missing widget on
a screen that is still shown is a bug and still raises. Any other failure of a worker
(a setting that does not validate, a certificate file that is not there, a bug) is said
in the screen's banner and the TUI goes on: an uncaught one ended the whole TUI with
Textual's traceback (``JETSOURCE_DEBUG=1`` lets it through, as the CLI does).

``Refreshing`` and ``one_read``: the guard every screen read every few seconds shares
(one read at a time, none while hidden, one at once when shown again).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from rich.text import Text
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Static

from jetsource.tui.text import clean

S = TypeVar("S", bound=Screen[Any])
R = TypeVar("R")


def closing(screen: Screen[Any]) -> bool:
    """True while the screen or the app is being taken down."""
    return not screen.is_attached or screen._closing or screen._closed or not screen.app.is_running


class Banner(Static):
    """A clear line when the stack is down (hidden while all is well)."""

    def show(self, message: str) -> None:
        self.update(Text(f"⚠ {clean(message, 500)}", style="bold white on dark_red"))
        self.display = True

    def clear(self) -> None:
        if self.display:  # called on every live event: a no-op must not relayout
            self.display = False


def unexpected(screen: Screen[Any], exc: Exception) -> None:
    """A worker's failure that no screen expects, said in its banner (the TUI goes on)."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    message = f"unexpected {what} (a bug; JETSOURCE_DEBUG=1 shows where)"
    if str(getattr(exc, "field", None) or "").startswith("JETSOURCE_"):
        message = str(exc)  # a setting refused, named (a client's TLS file): no bug
    banners = screen.query(Banner)
    if banners:
        banners.first().show(message)
    else:
        screen.notify(clean(message, 500), severity="error", timeout=15)


def while_shown(
    fn: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R | None]]:
    @functools.wraps(fn)
    async def run(self: S, *args: Any, **kwargs: Any) -> R | None:
        try:
            return await fn(self, *args, **kwargs)
        except NoMatches:
            if closing(self):
                return None
            raise
        except Exception as exc:
            if closing(self):
                return None
            if os.environ.get("JETSOURCE_DEBUG"):
                raise
            unexpected(self, exc)
            return None

    return run


# How long a screen's read goes without an answer before its banner says so.
SLOW_READ_S = 5.0


class Refreshing(Screen[None]):
    """A screen read every ``refresh_s``, and the guard its reads share:

    - one read at a time: a read still under way (a slow or absent stack) is left to
      finish, a tick or a key meanwhile reads nothing (cancelling it for the next tick
      would never let one complete);
    - a tick reads only while the screen is the one shown (each read lists a whole
      domain, on the UI's event loop);
    - where ``READ_ON_RESUME``, a screen shown again (after a read of its own) reads at
      once;
    - a read that has had no answer for ``SLOW_READ_S`` is said in the banner, with
      when what is shown was read (NATS paused or a server that takes connections but
      never answers: each request waits out its timeout and retries, half a minute and
      more, and the screen showed its old rows with no sign meanwhile).

    A subclass's ``reload`` is a ``@work`` worker whose body is decorated with
    :func:`one_read`; its ``on_mount`` sets the interval on ``tick``."""

    READ_ON_RESUME = True

    def __init__(self, refresh_s: float, screen_id: str | None = None) -> None:
        super().__init__(id=screen_id)
        self.refresh_s = refresh_s
        self.loaded = 0  # how many times a read finished (tests wait on it)
        self.reading = False
        self.read_since = 0.0  # time.monotonic() when the read under way began
        self.read_at = ""  # the wall-clock time of the last read that finished well

    def reload(self) -> object:
        raise NotImplementedError

    def tick(self) -> None:
        if self.reading:
            self._waiting()
        elif self.app.screen is self:
            self.reload()

    def _waiting(self) -> None:
        waited = time.monotonic() - self.read_since
        if waited < SLOW_READ_S or self.app.screen is not self:
            return
        shown = f"what is shown was read at {self.read_at}" if self.read_at else "nothing read yet"
        self.query_one(Banner).show(
            f"this read has taken {waited:.0f}s so far (a big ledger, or a server slow, "
            f"paused or out of reach); {shown}; still waiting"
        )

    def on_screen_resume(self) -> None:
        if self.READ_ON_RESUME and self.loaded and not self.reading:
            self.reload()


RS = TypeVar("RS", bound=Refreshing)


def one_read(fn: Callable[[RS], Awaitable[None]]) -> Callable[[RS], Awaitable[None]]:
    """A screen's read, one at a time (see :class:`Refreshing`), quiet when the screen
    is being closed (:func:`while_shown`)."""

    @functools.wraps(fn)
    async def run(self: RS) -> None:
        if self.reading:
            return
        self.reading, self.read_since, loaded = True, time.monotonic(), self.loaded
        try:
            await fn(self)
        finally:
            self.reading = False
        if self.loaded > loaded:
            self.read_at = datetime.now().strftime("%H:%M:%S")

    return while_shown(run)
