"""A screen's workers can outlive its widgets for a moment: a read that returns while
the screen is being closed (popped, or the app quitting) finds its widgets gone.

``while_shown`` lets such a worker end quietly then, and only then: a missing widget on
a screen that is still shown is a bug and still raises.
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
