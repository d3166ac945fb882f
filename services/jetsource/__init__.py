"""jetsource: an event-sourced Context Service on NATS JetStream."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str


@functools.cache
def _installed_version() -> str:
    """The version of the installed distribution (pyproject's ``version`` when it was
    installed): what ``jetsource --version`` prints and every service's
    ``jetsource_build_info`` reports, so the two never differ. A source tree that was
    never installed has none: "unknown", as ``jetsource --version`` says."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jetsource")
    except PackageNotFoundError:
        return "unknown"


def __getattr__(name: str) -> Any:
    # Looked up on first use, not when any jetsource module is imported: the metadata
    # scan ran before the `jetsource` command could take a Ctrl-C as one line
    # (jetsource.cli.main), a traceback of importlib.metadata instead.
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
