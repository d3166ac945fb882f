"""jetsource: an event-sourced Context Service on NATS JetStream."""

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    """The version of the installed distribution (pyproject's ``version`` when it was
    installed): what ``jetsource --version`` prints and every service's
    ``jetsource_build_info`` reports, so the two never differ. A source tree that was
    never installed has none: "unknown", as ``jetsource --version`` says."""
    try:
        return version("jetsource")
    except PackageNotFoundError:
        return "unknown"


__version__ = _installed_version()
