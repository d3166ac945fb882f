"""`projector status` with a graph store that accepts connections and never answers:
one Bolt call may wait 60 s (``graph.IO_TIMEOUT_S``), and status read each model in
turn, so the report took 61 s (a minute per graph model with a version). Every
model's rows are now read at once, each within ``admin.STATUS_TIMEOUT_S`` (10 s): the
graph models' rows say ``unavailable`` naming the bound, the others are whole (the
CLI then exits 3)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from jetsource.core.settings import GraphSettings, JetsourceSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.control import LIVE, ModelControl
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections, reads what comes and answers nothing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


async def test_status_with_a_silent_graph_ends_within_its_bound(
    settings: JetsourceSettings, unique: str, silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert admin.STATUS_TIMEOUT_S == 10.0
    monkeypatch.setattr(admin, "STATUS_TIMEOUT_S", 1.0)
    silent = settings.model_copy(
        update={
            "graph": GraphSettings(uri=f"bolt://127.0.0.1:{silent_port}", connection_timeout_s=30)
        }
    )
    p = await open_projection(projector_settings(silent, unique, models=["context", "graph"]))
    try:
        # Both models have a live version 1 (as after a projector ran them).
        for name in ("context", "graph"):
            await p.control.save(name, ModelControl(1, {1: LIVE}))
        started = time.monotonic()
        async with asyncio.timeout(20):  # (before: 60 s per graph model)
            rows = await admin.status(p)
        took = time.monotonic() - started
    finally:
        await p.close()
    by_model = {r["model"]: r for r in rows}
    assert by_model["graph"]["state"] == "unavailable", rows
    assert "did not answer within 1 s" in by_model["graph"]["error"], rows
    assert by_model["context"]["state"] != "unavailable", rows
    assert by_model["context"]["version"] == 1, rows
    assert took < 5, f"status took {took:.1f} s"
