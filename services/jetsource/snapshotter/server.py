"""Snapshotter entrypoint: the projector runtime running the ``snapshots`` model (a
durable consumer ``jetsource-snapshots-v<state schema>``), with /metrics and
/healthz over HTTP (default port 9103); SIGTERM finishes the batch in progress."""

from __future__ import annotations

from functools import partial

from jetsource.core.metrics import register_service
from jetsource.core.runner import load_settings, run_service
from jetsource.core.settings import env_var
from jetsource.projection.host import serve
from jetsource.snapshotter.settings import SnapshotterSettings


def main() -> None:
    # jetsource_build_info; the NATS connection state is watched in projector.server.serve
    # (shared with the projector), which owns the connection.
    register_service("snapshotter")
    run_service(
        "snapshotter",
        load_settings("snapshotter", SnapshotterSettings).runtime(),
        partial(
            serve,
            name="snapshotter",
            port_setting=env_var(SnapshotterSettings, "snapshotter", "http_port"),
        ),
    )


if __name__ == "__main__":
    main()
