"""Snapshotter entrypoint: the projector runtime running the ``snapshots`` model (a
durable consumer ``jetsource-snapshots-v<state schema>``), with /metrics and
/healthz over HTTP (default port 9103); SIGTERM finishes the batch in progress."""

from __future__ import annotations

from functools import partial

from jetsource.core.runner import run_service
from jetsource.projector.server import serve
from jetsource.snapshotter.settings import SnapshotterSettings


def main() -> None:
    run_service(
        "snapshotter", SnapshotterSettings.load().runtime(), partial(serve, name="snapshotter")
    )


if __name__ == "__main__":
    main()
