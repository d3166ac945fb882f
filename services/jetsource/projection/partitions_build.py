"""Parallel rebuild (#20): ``projector rebuild --workers K`` builds a model version
with K processes, each consuming its share of the stream's N partitions (the
partition mirror, as the partitioned service does) until caught up.

The parent (``admin.rebuild``) starts the children (this module, run with
``python -m``), reading their settings and their partitions as JSON on stdin (so no
secret is on a command line), shows progress from the partitions' consumers, then
hands the version to the service: the per-partition consumers go on as they are for a
partitioned service with the same N; for an unpartitioned one, its consumer is
created at the lowest sequence every partition had got to (later events already
applied are done again as duplicates: nothing changes)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from jetsource.core import aio
from jetsource.core.heap import kept_while
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.partitions import Partition, ensure_mirror, wait_mirror
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorSettings


def settings_json(settings: ProjectorSettings) -> Any:
    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return str(value)

    return json.loads(json.dumps(settings.model_dump(mode="python"), default=plain))


def partitions_of(p: Projection, name: str, count: int) -> list[Partition]:
    s = p.store_for(name).settings
    return [Partition(i, count, s.stream, s.subject_prefix) for i in range(count)]


async def ensure_partitions(p: Projection, name: str, count: int) -> None:
    store = p.store_for(name)
    await store.start()
    s = p.settings.eventstore
    await ensure_mirror(
        store._replies,
        store.settings.stream,
        store.settings.subject_prefix,
        count,
        s.replicas,
        s.request_timeout_s,
    )
    await wait_mirror(store._replies, store.settings.stream, count, s.request_timeout_s)


@dataclass
class Child:
    process: asyncio.subprocess.Process
    partitions: list[int]


async def start_children(
    p: Projection, name: str, version: int, count: int, workers: int
) -> list[Child]:
    children = []
    for i in range(workers):
        share = list(range(i, count, workers))
        if not share:
            continue
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jetsource.projection.partitions_build",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        body = {
            "settings": settings_json(p.settings),
            "model": name,
            "version": version,
            "count": count,
            "partitions": share,
        }
        assert process.stdin is not None
        process.stdin.write(json.dumps(body).encode())
        await process.stdin.drain()
        process.stdin.close()
        children.append(Child(process, share))
    return children


def failure(child: Child, returncode: int, stderr: bytes) -> str:
    """Why a build worker failed, naming its partitions: one killed by a signal
    (the OOM killer, kill -9) writes no stderr, and the message named nothing."""
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    text = stderr.decode(errors="replace").strip()[-2000:]
    return (
        f"the build worker of partitions {child.partitions} {how}"
        + (f": {text}" if text else " (no output)")
        + "; what the workers applied is kept: run the same command again to resume"
    )


async def pending(p: Projection, name: str, version: int, count: int) -> int:
    """Events of the version's partitions not yet applied (delivered or not). A
    partition whose worker has not made its consumer yet has applied nothing: all of
    its messages are pending (they counted as none, so a parallel build began at 100%
    and its progress went backwards, with a negative rate)."""
    store = p.store_for(name)
    durable = p.spec(name, version).durable
    t = store.settings.request_timeout_s
    left = 0
    for part in partitions_of(p, name, count):
        info = await jsapi.consumer_info(store._replies, part.stream, part.durable(durable), t)
        if info is not None:
            left += int(info["num_pending"]) + int(info["num_ack_pending"])
        else:
            stream = await jsapi.api(store._replies, f"STREAM.INFO.{part.stream}", {}, t)
            left += int(stream["state"]["messages"])
    return left


async def reached(p: Projection, name: str, version: int, count: int) -> int:
    """The highest sequence up to which every partition has applied everything."""
    store = p.store_for(name)
    durable = p.spec(name, version).durable
    t = store.settings.request_timeout_s
    low: int | None = None
    for part in partitions_of(p, name, count):
        stream = await jsapi.api(store._replies, f"STREAM.INFO.{part.stream}", {}, t)
        last = int(stream["state"]["last_seq"])
        info = await jsapi.consumer_info(store._replies, part.stream, part.durable(durable), t)
        if info is None:
            return 0
        if int(info["num_pending"]) == 0 and int(info["num_ack_pending"]) == 0:
            got = last
        else:
            got = int(info["ack_floor"]["stream_seq"])
        low = got if low is None else min(low, got)
    return low or 0


async def hand_over(p: Projection, name: str, version: int, count: int) -> int:
    """Create the unpartitioned consumer of the version where the partitions got to
    (unless it exists); returns that sequence."""
    upto = await reached(p, name, version, count)
    worker = Worker(
        p.nc, p.store_for(name), p.model(name, version), p.dead_letters, p.settings.projector
    )
    await worker.ensure_consumer(from_seq=upto + 1)
    return upto


async def _child(body: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    settings = ProjectorSettings.model_validate(body["settings"])
    p = await open_projection(settings, provision=False)
    opened = time.perf_counter()
    try:
        name, version, count = body["model"], int(body["version"]), int(body["count"])
        options = settings.projector.model_copy(update={"pull_expires_s": 0.5})
        workers = []
        for part in partitions_of(p, name, count):
            if part.index in body["partitions"]:
                model = p.model(name, version)
                workers.append(
                    Worker(p.nc, p.store_for(name), model, p.dead_letters, options, part)
                )
        async with kept_while():
            await asyncio.gather(*(w.run(until_caught_up=True) for w in workers))
        return {
            "open_s": round(opened - began, 3),
            "build_s": round(time.perf_counter() - opened, 3),
            "partitions": body["partitions"],
            "applied": sum(w.stats.applied for w in workers),
            "dead_letters": sum(w.stats.dead_letters for w in workers),
        }
    finally:
        await p.close()


def main() -> None:
    body = json.loads(sys.stdin.read())
    print(json.dumps(aio.run(_child(body))))


if __name__ == "__main__":
    main()


async def delete_partition_consumers(p: Projection, name: str, version: int) -> int:
    """Delete the version's consumers on every partition mirror of its stream (any
    N): a drop or a reset must leave no partition consumer to resume from."""
    store = p.store_for(name)
    await store.start()
    t = store.settings.request_timeout_s
    origin = store.settings.stream
    durable = p.spec(name, version).durable
    mirrors: list[str] = []
    offset = 0
    while True:
        page = await jsapi.api(store._replies, "STREAM.NAMES", {"offset": offset}, t)
        names = page.get("streams") or []
        mirrors += [n for n in names if re.fullmatch(rf"{re.escape(origin)}_P\d+", n)]
        offset += len(names)
        if not names or offset >= int(page.get("total", 0)):
            break
    deleted = 0
    for mirror in mirrors:
        count = int(mirror.rsplit("_P", 1)[1])
        for i in range(count):
            consumer = Partition(i, count, origin, store.settings.subject_prefix).durable(durable)
            if await jsapi.delete_consumer(store._replies, mirror, consumer, t):
                deleted += 1
    return deleted
