"""``jetsource projector status`` asked each stream it reads for its leader, never the
model versions' durable consumers: a consumer whose leader was on a server that went
away (R3; its stream's leader elsewhere, or left behind without quorum and not seen as
such for STALE_PEER_S) went unnamed, exit 0 with a model standing still. Each is asked
now and named as a stream is (exit 3, ``leaderless`` in JSON). Stubbed jsapi answers;
the R3 run is tests/chaos/test_cluster_r3_chaos.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.cli import projector
from jetsource.eventstore import jsapi

STREAM = "CONTEXT_EVENTS"

# As nats-server answers them: a single server's consumer has no "cluster"; the meta
# leader answers for a replicated one without a leader with no "cluster" either.
SINGLE = {"config": {"durable_name": "d1", "num_replicas": 0}}
LEADERLESS = {"config": {"durable_name": "d1", "num_replicas": 0}}
HEALTHY = {
    "config": {"durable_name": "d1", "num_replicas": 0},
    "cluster": {
        "leader": "n0",
        "replicas": [
            {"name": "n1", "current": True, "active": 20_000_000},
            {"name": "n2", "current": True, "active": 30_000_000},
        ],
    },
}
CUT_OFF = {
    "config": {"durable_name": "d1", "num_replicas": 3},
    "cluster": {
        "leader": "n0",
        "replicas": [
            {"name": "n1", "current": False, "offline": True, "active": 9_000_000_000},
            {"name": "n2", "current": False, "active": 9_000_000_000},
        ],
    },
}


@pytest.mark.parametrize(
    ("info", "stream_replicas", "why"),
    [
        (SINGLE, 1, None),
        (HEALTHY, 3, None),
        (LEADERLESS, 3, "no leader"),
        (CUT_OFF, 1, "its leader n0 lost quorum (replicas n1, n2 not current)"),
    ],
)
def test_consumer_leadership(info: dict[str, Any], stream_replicas: int, why: str | None) -> None:
    assert projector.consumer_leadership(info, stream_replicas) == why


def _projection() -> Any:
    store = SimpleNamespace(
        _replies=object(),
        settings=SimpleNamespace(stream=STREAM, request_timeout_s=0.5),
    )

    async def start() -> None:
        return None

    store.start = start
    return SimpleNamespace(
        store=store,
        spec=lambda model, version: SimpleNamespace(durable=f"{model}_v{version}"),
        settings=SimpleNamespace(projector=SimpleNamespace(control_bucket="RM")),
    )


def _status(monkeypatch: pytest.MonkeyPatch, consumer: dict[str, Any]) -> Any:
    from jetsource.projection import admin

    p = _projection()
    rows: list[dict[str, Any]] = [
        {"domain": "context", "stream": STREAM, "model": "timeline", "version": 2, "state": "live"},
        {"domain": "context", "stream": STREAM, "model": "graph", "version": "-", "state": "x"},
    ]

    async def status(_: Any) -> list[dict[str, Any]]:
        return rows

    async def healthy_stream(*args: Any) -> None:
        return None

    async def api(replies: Any, subject: str, body: Any, timeout: float) -> dict[str, Any]:
        assert subject == f"STREAM.INFO.{STREAM}"
        return {"config": {"num_replicas": 3}, "cluster": {"leader": "n0"}}

    async def consumer_info(replies: Any, stream: str, name: str, timeout: float) -> Any:
        assert (stream, name) == (STREAM, "timeline_v2")
        return consumer

    async def absent(*args: Any) -> list[str]:
        return []

    monkeypatch.setattr(admin, "status", status)
    monkeypatch.setattr(jsapi, "stream_leadership", healthy_stream)
    monkeypatch.setattr(jsapi, "api", api)
    monkeypatch.setattr(jsapi, "consumer_info", consumer_info)
    monkeypatch.setattr(projector, "_all_streams", lambda p: [STREAM])
    monkeypatch.setattr(projector, "_absent", absent)
    monkeypatch.setattr(projector, "_run", lambda work, *a, **k: asyncio.run(work(p)))
    return CliRunner().invoke(projector.app, ["status", "--json"])


def test_status_names_a_durable_consumer_without_a_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = _status(monkeypatch, LEADERLESS)
    assert r.exit_code == 3, r.output
    error = json.loads(r.output.strip().splitlines()[-1])["error"]
    assert error["leaderless"] == [f"consumer {STREAM}/timeline_v2"], error
    assert f"consumer {STREAM}/timeline_v2 has no leader" in error["message"], error


def test_status_of_a_healthy_replicated_consumer_says_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = _status(monkeypatch, HEALTHY)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("denied", "access_denied"),
    [("STREAM.INFO.CE_SNAPSHOTS", False), ("STREAM.INFO.CE", True)],
)
async def test_a_denial_names_its_stream_exactly(
    monkeypatch: pytest.MonkeyPatch, denied: str, access_denied: bool
) -> None:
    """A stream not answered is access denied only when NATS refused a request to its
    own STREAM.INFO: the stream's name was matched as a part of the subject, so a
    denial of STREAM.INFO.CE_SNAPSHOTS made stream CE, merely leaderless, access
    denied (exit 1 instead of 3)."""
    from jetsource.core.errors import AccessDeniedError

    async def leaderless(*args: Any) -> str:
        return "STREAM.INFO not answered within 0.5 s"

    monkeypatch.setattr(jsapi, "stream_leadership", leaderless)
    monkeypatch.setattr(jsapi, "_DENIALS", type(jsapi._DENIALS)(maxlen=16))
    jsapi.note_denial(
        f'nats: permissions violation: Permissions Violation for Publish to "$JS.API.{denied}"'
    )
    if access_denied:
        with pytest.raises(AccessDeniedError):
            await projector._leaderless(_projection(), ["CE"])
    else:
        assert await projector._leaderless(_projection(), ["CE"]) == {
            "CE": "STREAM.INFO not answered within 0.5 s"
        }
