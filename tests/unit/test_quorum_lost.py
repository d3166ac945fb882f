"""What a replicated stream's INFO says of its leader (``jsapi.quorum_lost``), as
`jetsource projector status` reads it: a leader cut off from its replicas still
answers, and nats-server calls them current for 10 s after it last heard from them
(`tests/chaos/test_cluster_r3_chaos.py` has the real cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource.eventstore.jsapi import STALE_PEER_S, quorum_lost


def _info(replicas: int, leader: str | None, peers: list[dict[str, Any]]) -> dict[str, Any]:
    cluster: dict[str, Any] = {"name": "c", "replicas": peers}
    if leader is not None:
        cluster["leader"] = leader
    return {"config": {"num_replicas": replicas}, "cluster": cluster}


def _peer(name: str, current: bool = True, active_s: float = 0.02) -> dict[str, Any]:
    return {"name": name, "current": current, "active": int(active_s * 1e9)}


@pytest.mark.parametrize(
    ("info", "said"),
    [
        (_info(3, "n0", [_peer("n1"), _peer("n2")]), None),
        (_info(3, "n0", [_peer("n1"), _peer("n2", current=False)]), None),  # one of three away
        (
            _info(3, "n0", [_peer("n1", current=False), _peer("n2", current=False)]),
            "its leader n0 lost quorum (replicas n1, n2 not current)",
        ),
        (  # still "current", not heard from for longer than a heartbeat allows
            _info(3, "n0", [_peer("n1", active_s=STALE_PEER_S + 1), _peer("n2", active_s=9)]),
            "its leader n0 lost quorum (replicas n1, n2 not current)",
        ),
        (_info(3, None, [_peer("n0"), _peer("n1", current=False)]), "no leader"),
        ({"config": {"num_replicas": 1}, "cluster": {"name": "c", "leader": "n0"}}, None),
        ({"config": {"num_replicas": 1}}, None),  # a single server: no cluster at all
    ],
)
def test_quorum_lost(info: dict[str, Any], said: str | None) -> None:
    assert quorum_lost(info) == said
