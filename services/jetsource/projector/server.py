"""Projector entrypoint: the runtime host running every default read model of every
registered domain (or the ones ``JETSOURCE_PROJECTOR__MODELS`` names)."""

from __future__ import annotations

from jetsource.core.metrics import register_service
from jetsource.core.runner import load_settings, run_service
from jetsource.projection.host import serve
from jetsource.projection.settings import ProjectorSettings


def main() -> None:
    register_service("projector")
    run_service("projector", load_settings("projector", ProjectorSettings), serve)


if __name__ == "__main__":
    main()
