"""`jetsource streams ensure` right after a three-server cluster's start: its first
STREAM.INFO (what is there before creating) went unanswered, or answered 503/10008,
while the cluster had no JetStream meta leader yet, and ensure ended exit 3 "NATS ...
did not answer within 120 s" after 5 s (or exit 1 on the 503). It waits for the meta
leader within its bound, as the creates do (jsapi.create_waiting)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Cluster, make_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, 3)
    yield c
    c.stop()


def test_streams_ensure_waits_for_a_cluster_still_forming(cluster: Cluster) -> None:
    from tests.cli_env import cli_env

    cluster.start(0)  # one of three: NATS answers, JetStream has no meta leader
    env = cli_env(
        cluster.url,
        uuid.uuid4().hex[:8],
        JETSOURCE_EVENTSTORE__REPLICAS="3",
        JETSOURCE_SNAPSHOTS__REPLICAS="3",
        JETSOURCE_EVENTSTORE__REQUEST_TIMEOUT_S="2",
    )
    ensure = subprocess.Popen(
        [sys.executable, "-m", "jetsource", "streams", "ensure", "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(4.0)  # past the first STREAM.INFO's 2 s
        assert ensure.poll() is None, ensure.communicate()
        cluster.start(1)
        cluster.start(2)
        out, err = ensure.communicate(timeout=90)
    finally:
        if ensure.poll() is None:
            ensure.kill()
    assert ensure.returncode == 0, out + err
    assert "created" in out, out
