"""Give an existing stream a protection the server will not change in place.

A stream created with ``deny_purge`` keeps it forever: ``STREAM.UPDATE`` refuses to
lift it. When a domain's policy later allows purges for a role (the sessions pruner on
PROCESS_EVENTS), the stream is moved, under the same name, with every message at its
sequence (headers, payloads and stored times kept), through a mirror:

1. the stream's durable consumers are noted (config and ack floor) in the metadata of
   a holding stream ``<name>_RESHAPE``, a mirror of the stream;
2. the stream is sealed (no more writes: writers get an error and retry), the mirror
   catches up to its last sequence;
3. the stream is deleted and the holding stream promoted (a mirror no more);
4. the stream is made again as a mirror of the holding stream, catches up, and is
   promoted with the wanted configuration (its subjects back);
5. its consumers are made again from their ack floors (unacknowledged messages are
   delivered again: read models apply an event once), and the holding stream goes.

Each step looks at what is there first, so a run killed anywhere is finished by the
next (the holding stream keeps the messages and the consumers' notes meanwhile).
Run it with the writers stopped or tolerant of a short refusal (the observer answers
UNAVAILABLE and its clients retry): appends are refused between steps 2 and 4.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from jetsource.eventstore import jsapi

_NOTE = "jetsource.reshape.consumers"


async def _info(replies: jsapi.Replies, name: str, timeout: float) -> dict[str, Any] | None:
    try:
        return await jsapi.api(replies, f"STREAM.INFO.{name}", {}, timeout)
    except jsapi.JsApiError as exc:
        if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
            return None
        raise


async def _consumers(replies: jsapi.Replies, name: str, timeout: float) -> list[dict[str, Any]]:
    body = await jsapi.api(replies, f"CONSUMER.LIST.{name}", {"offset": 0}, timeout)
    out = []
    for c in body.get("consumers") or []:
        config = c["config"]
        if not config.get("durable_name"):
            continue  # ephemeral (a live follower): it is made again by its owner
        out.append({"config": config, "acked": int(c.get("ack_floor", {}).get("stream_seq", 0))})
    return out


async def _caught_up(
    replies: jsapi.Replies, name: str, last_seq: int, messages: int, timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout * 6, 30.0)
    while True:
        info = await _info(replies, name, timeout)
        state = (info or {}).get("state", {})
        if int(state.get("last_seq", 0)) >= last_seq and int(state.get("messages", 0)) >= messages:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"mirror {name} did not reach sequence {last_seq} in time")
        await asyncio.sleep(0.05)


async def lift_deny_purge(
    replies: jsapi.Replies,
    config: Mapping[str, Any],
    timeout: float,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Move the stream ``config["name"]`` to ``config`` (which allows purges) when it
    exists with deny_purge; returns the stream's info afterwards."""
    name = config["name"]
    hold = f"{name}_RESHAPE"
    api = jsapi.api
    info = await _info(replies, name, timeout)
    held = await _info(replies, hold, timeout)
    if info is not None and not info["config"].get("mirror") and held is None:
        if not info["config"].get("deny_purge"):
            return info  # nothing to move
        consumers = await _consumers(replies, name, timeout)
        say(f"{name}: holding {info['state']['messages']} messages in {hold}")
        hold_config = {
            "name": hold,
            "mirror": {"name": name},
            "storage": info["config"]["storage"],
            "num_replicas": info["config"].get("num_replicas", 1),
            "metadata": {_NOTE: json.dumps(consumers)},
        }
        held = await jsapi.create_waiting(
            lambda: api(replies, f"STREAM.CREATE.{hold}", hold_config, timeout),
            hold,
            int(hold_config["num_replicas"] or 1),
        )
    if info is not None and not info["config"].get("mirror") and info["config"].get("deny_purge"):
        if not info["config"].get("sealed"):
            sealed = {**info["config"], "sealed": True}
            info = await api(replies, f"STREAM.UPDATE.{name}", sealed, timeout)
        state = info["state"]
        await _caught_up(replies, hold, int(state["last_seq"]), int(state["messages"]), timeout)
        await api(replies, f"STREAM.DELETE.{name}", {}, timeout)
        info = None
    assert held is not None or info is not None, f"{name} and {hold} are both missing"
    if held is not None and held["config"].get("mirror"):
        promoted = {k: v for k, v in held["config"].items() if k != "mirror"}
        held = await api(replies, f"STREAM.UPDATE.{hold}", promoted, timeout)
    if info is None:
        assert held is not None
        say(f"{name}: made again from {hold} with purges allowed")
        again = {
            "name": name,
            "mirror": {"name": hold},
            "storage": config.get("storage", "file"),
            "num_replicas": config.get("num_replicas", 1),
        }
        info = await jsapi.create_waiting(
            lambda: api(replies, f"STREAM.CREATE.{name}", again, timeout),
            name,
            int(again["num_replicas"] or 1),
        )
    if info["config"].get("mirror"):
        if held is not None:
            state = held["state"]
            await _caught_up(replies, name, int(state["last_seq"]), int(state["messages"]), timeout)
        info = await api(replies, f"STREAM.UPDATE.{name}", dict(config), timeout)
    if held is not None:
        notes = json.loads((held["config"].get("metadata") or {}).get(_NOTE, "[]"))
        for c in notes:
            durable = c["config"]["durable_name"]
            consumer = dict(c["config"])
            if c["acked"]:
                consumer.update(deliver_policy="by_start_sequence", opt_start_seq=c["acked"] + 1)
                consumer.pop("opt_start_time", None)
            body = {"stream_name": name, "config": consumer, "action": "create"}
            try:
                await api(replies, f"CONSUMER.CREATE.{name}.{durable}", body, timeout)
            except jsapi.JsApiError as exc:
                if "already" not in exc.description and "exists" not in exc.description:
                    raise
        await api(replies, f"STREAM.DELETE.{hold}", {}, timeout)
        info = await api(replies, f"STREAM.INFO.{name}", {}, timeout)
    return info
