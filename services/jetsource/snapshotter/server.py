"""Snapshotter entrypoint: the projector runtime running the ``snapshots`` model (a
durable consumer ``jetsource-snapshots-v<state schema>``), with /metrics and
/healthz over HTTP (default port 9103); SIGTERM finishes the batch in progress."""

from __future__ import annotations

import asyncio
import logging

from jetsource.projector.server import serve
from jetsource.snapshotter.settings import SnapshotterSettings


def main() -> None:
    settings = SnapshotterSettings.load()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(settings.runtime(), name="snapshotter"))


if __name__ == "__main__":
    main()
