"""A screen's workers can outlive its widgets for a moment: a read that returns while
the screen is being closed (popped, or the app quitting) finds its widgets gone.

``while_shown`` lets such a worker end quietly then, and only then: a missing widget on
a screen that is still shown is a bug and still raises.

``Refreshing`` and ``one_read``: the guard every screen read every few seconds shares
(one read at a time, none while hidden, one at once when shown again).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from textual.css.query import NoMatches
from textual.screen import Screen

S = TypeVar("S", bound=Screen[Any])
R = TypeVar("R")


def closing(screen: Screen[Any]) -> bool:
    """True while the screen or the app is being taken down."""
    return not screen.is_attached or screen._closing or screen._closed or not screen.app.is_running


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

    return run


class Refreshing(Screen[None]):
    """A screen read every ``refresh_s``, and the guard its reads share:

    - one read at a time: a read still under way (a slow or absent stack) is left to
      finish, a tick or a key meanwhile reads nothing (cancelling it for the next tick
      would never let one complete);
    - a tick reads only while the screen is the one shown (each read lists a whole
      domain, on the UI's event loop);
    - where ``READ_ON_RESUME``, a screen shown again (after a read of its own) reads at
      once.

    A subclass's ``reload`` is a ``@work`` worker whose body is decorated with
    :func:`one_read`; its ``on_mount`` sets the interval on ``tick``."""

    READ_ON_RESUME = True

    def __init__(self, refresh_s: float, screen_id: str | None = None) -> None:
        super().__init__(id=screen_id)
        self.refresh_s = refresh_s
        self.loaded = 0  # how many times a read finished (tests wait on it)
        self.reading = False

    def reload(self) -> object:
        raise NotImplementedError

    def tick(self) -> None:
        if not self.reading and self.app.screen is self:
            self.reload()

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
        self.reading = True
        try:
            await fn(self)
        finally:
            self.reading = False

    return while_shown(run)
