"""Whether a service can write to its event stream, published as its gRPC health.

Shared by every service that writes events (the publisher, the observer). Health is
set two ways:

- by what the service's appends answer (:meth:`WriteHealth.mark`: a refusal or no
  answer: not writable; a stored event: writable), and
- by a probe of its own, so that health comes back without any append: a service that
  says NOT_SERVING is taken out of its Kubernetes Service and gets no append at all.
  The probe checks the NATS connection, the event stream's state (sealed, at its
  max_bytes), the account's storage against its limit, and makes a tiny write to
  ``JETSOURCE_PROBE`` (one message per service instance, replaced each time). It runs
  every :data:`PROBE_EVERY_S` while writable (a refusal is noticed even when no write
  comes), every :data:`PROBE_RETRY_S` while not (the way back is noticed quickly), and
  at once when an append fails or the NATS connection drops.

The engine names JetStream refusals (``jetsource.eventstore.refusals``), a layer above
this one: the service passes that naming in as ``name_refusal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grpc_health.v1 import health_pb2
from nats.aio.client import Client as NATS

from jetsource.core import deadline as call_deadline
from jetsource.core.aio import honour_cancel, stop_task, wait_event
from jetsource.core.natsping import within

log = logging.getLogger(__name__)

PROBE_STREAM = "JETSOURCE_PROBE"
PROBE_EVERY_S = 10.0  # while writable: notice a refusal even when no write comes
PROBE_RETRY_S = 1.0  # while not writable: notice the way back quickly
PROBE_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 5.0  # the probe's JetStream API requests (nats-py's own default)
CONNECTION_CHECK_S = 0.5  # while writable: a dropped NATS connection is noticed this soon

#: (an exception, the stream it concerns) -> a named refusal, or None when it is none.
NameRefusal = Callable[[BaseException, str], BaseException | None]


def _no_names(exc: BaseException, stream: str) -> BaseException | None:
    return None


def _full(info: Any) -> str | None:
    """The limit a stream refuses new messages at, reached (``max_bytes (N)``,
    ``max_msgs (N)``), or None. Only a stream that discards new messages refuses: one
    that discards old ones takes every write, dropping its oldest. ``max_msgs`` was not
    looked at, so health came back SERVING while every append was refused
    ("maximum messages exceeded")."""
    from nats.js.api import DiscardPolicy

    if info.config.discard != DiscardPolicy.NEW:
        return None
    max_bytes = info.config.max_bytes or -1
    if max_bytes > 0 and info.state.bytes >= max_bytes:
        return f"max_bytes ({max_bytes})"
    max_msgs = info.config.max_msgs or -1
    if max_msgs > 0 and info.state.messages >= max_msgs:
        return f"max_msgs ({max_msgs})"
    return None


@dataclass
class WriteHealth:
    """Whether ``who`` can store events in ``stream``; its gRPC health (``health``,
    grpc_health's aio servicer, for the overall name and ``service_name``) and
    ``gauge`` (1 writable, 0 not) follow it. :meth:`start` runs the probe;
    :meth:`stop` ends it."""

    nc: NATS
    stream: str
    service_name: str
    gauge: Any  # a prometheus Gauge without labels
    who: str = "service"
    replicas: int = 1
    name_refusal: NameRefusal = _no_names
    every_s: float = PROBE_EVERY_S
    request_timeout_s: float = REQUEST_TIMEOUT_S
    retry_s: float = PROBE_RETRY_S
    health: Any = None  # grpc_health's aio HealthServicer
    writable: bool = True
    reason: str = ""
    probe_subject: str = ""
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _probe_ready: bool = False

    def __post_init__(self) -> None:
        if not self.probe_subject:
            self.probe_subject = f"jetsource.probe.{self.who}.{time.time_ns()}"

    async def mark(self, writable: bool, reason: str = "") -> None:
        changed = writable != self.writable
        self.writable, self.reason = writable, reason
        self.gauge.set(1 if writable else 0)
        if not changed:
            return
        if writable:
            log.info("%s can store events again: SERVING", self.who)
        else:
            log.warning("%s cannot store events: NOT_SERVING (%s)", self.who, reason)
            self._wake.set()  # probe at once: the way back starts now
        if self.health is not None:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if writable
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", self.service_name):
                await self.health.set(name, status)

    async def probe(self) -> str:
        """Empty when the service can write; else what stops it."""
        if not self.nc.is_connected:
            return "NATS is not connected"
        wait = self.request_timeout_s
        js = self.nc.jetstream(timeout=wait)
        # Each call bounded for sure (within): nats-py's own waited for room in a full
        # pending buffer with no end, so with the server hung the probe never ended and
        # health stayed SERVING.
        try:
            info = await within(js.stream_info(self.stream), wait)
            if info.config.sealed:
                return f"stream {self.stream} is sealed"
            if (limit_reached := _full(info)) is not None:
                return f"stream {self.stream} is at its {limit_reached} (discard new)"
            account = await within(js.account_info(), wait)
            limit = account.limits.max_storage or -1
            used = account.storage + (getattr(account, "reserved_storage", 0) or 0)
            if limit > 0 and used >= limit:
                return f"JetStream account storage limit reached ({used} of {limit} bytes)"
            if not self._probe_ready:
                from nats.js.api import DiscardPolicy, StorageType, StreamConfig

                with contextlib.suppress(Exception):  # exists already: fine
                    config = StreamConfig(
                        name=PROBE_STREAM,
                        subjects=["jetsource.probe.>"],
                        storage=StorageType.FILE,
                        max_msgs_per_subject=1,
                        max_age=3600,
                        discard=DiscardPolicy.OLD,
                        num_replicas=self.replicas,
                    )
                    await within(js.add_stream(config), wait)
                self._probe_ready = True
            await within(
                js.publish(
                    self.probe_subject, b"probe", stream=PROBE_STREAM, timeout=PROBE_TIMEOUT_S
                ),
                PROBE_TIMEOUT_S,
            )
        except Exception as exc:
            self._probe_ready = False  # the probe stream may be missing: create it next time
            named = self.name_refusal(exc, PROBE_STREAM)
            if named is not None:
                return str(named)
            if isinstance(exc, TimeoutError):  # a bare TimeoutError() named no cause
                return (
                    f"NATS JetStream did not answer the probe of stream {self.stream} "
                    f"({type(exc).__name__}): no leader for it in a NATS cluster (an "
                    "election, or quorum lost: more than half of its servers down or cut "
                    "off), a full disk, or a server that hangs"
                )
            return f"NATS JetStream did not accept a probe write: {exc!r}"
        return ""

    async def run(self) -> None:
        while True:
            honour_cancel()  # a probe's library may swallow the cancel that stops this
            problem = await self.probe()
            await self.mark(not problem, problem)
            self._wake.clear()
            await self._pause()

    async def _pause(self) -> None:
        """Until the next probe: ``retry_s`` while not writable; while writable,
        ``every_s`` or until the NATS connection drops (looked at every
        :data:`CONNECTION_CHECK_S`, no I/O), whichever comes first."""
        if not self.writable:
            await wait_event(self._wake, self.retry_s)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.every_s
        while (left := deadline - loop.time()) > 0:
            if await wait_event(self._wake, min(left, CONNECTION_CHECK_S)):
                return
            if not self.nc.is_connected:
                return

    def start(self) -> None:
        self.gauge.set(1 if self.writable else 0)
        # Without the deadline of a call it may be started in: it runs for good.
        self._task = call_deadline.spawn(self.run(), name=f"{self.who}-write-health")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
