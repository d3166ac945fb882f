"""jetsource: an event-sourced Context Service on NATS JetStream."""

# No import here, not even __future__ (typing and functools were 14 ms of them): this
# runs first in `python -m jetsource` and the `jetsource` command, before either can
# take a Ctrl-C as one line (jetsource.__main__, jetsource.cli.main); one here was a
# traceback.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    __version__: str

_version: list[str] = []  # the installed version, once looked up


def _installed_version() -> str:
    """The version of the installed distribution (pyproject's ``version`` when it was
    installed): what ``jetsource --version`` prints and every service's
    ``jetsource_build_info`` reports, so the two never differ. A source tree that was
    never installed has none: "unknown", as ``jetsource --version`` says."""
    if not _version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            _version.append(version("jetsource"))
        except PackageNotFoundError:
            _version.append("unknown")
    return _version[0]


def __getattr__(name: str) -> "Any":
    # Looked up on first use, not when any jetsource module is imported: the metadata
    # scan ran before the `jetsource` command could take a Ctrl-C as one line
    # (jetsource.cli.main), a traceback of importlib.metadata instead.
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
