"""Stand-in command services for the publisher benchmark's floor rows (issue 23).

Each serves the publisher's gRPC API (`ContextCommandService.AddDecision`) through
the same server set-up as every jetsource service (`start_grpc`: guard, health,
reflection, uvloop) but does less per call than a command, so the publisher's rows can
be read against what the stack itself costs on this machine:

  - ``grpc``: answers at once (no NATS): what grpc.aio costs per call;
  - ``publish``: awaits one raw nats-py ``js.publish`` of a stored event's bytes per
    call (no decide, no fold, no idempotency): gRPC + one JetStream round trip;
  - ``append``: awaits one ``JetStreamEventStore.append`` of the request's decision
    (envelope, event id, sealing, expected-sequence check), nothing else.

    FLOOR_MODE=grpc|publish|append FLOOR_PORT=N FLOOR_NATS=nats://... \
        python -m bench.floor_server
"""

from __future__ import annotations

import os
from typing import Any

import nats
import uvloop

from bench.common import raw_stream
from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import ExpectedVersion, NewEvent
from jetsource.core.grpcserver import start_grpc, stop_on_signals
from jetsource.core.settings import EventStoreSettings
from jetsource.domains.context.command_service import SERVICE
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.publisher.settings import PublisherOptions

MODES = ("grpc", "publish", "append")


class Floor(pb_grpc.ContextCommandServiceServicer):
    def __init__(self, mode: str, js: Any, store: JetStreamEventStore, payload: bytes) -> None:
        self._mode = mode
        self._js = js
        self._store = store
        self._payload = payload
        self._answer = pb.AddDecisionResponse(result=pb.CommandResult())

    async def AddDecision(self, request: pb.AddDecisionRequest, context: Any) -> Any:
        if self._mode == "publish":
            await self._js.publish(f"floorraw.{request.context_id}.DecisionAdded", self._payload)
        elif self._mode == "append":
            event = ev.DecisionAdded(
                decision_id=request.decision_id, title=request.title, body=request.body
            )
            await self._store.append(request.context_id, [NewEvent(event)], ExpectedVersion.ANY)
        return self._answer


async def serve(mode: str, port: int, url: str) -> None:
    if mode not in MODES:
        raise SystemExit(f"FLOOR_MODE must be one of {', '.join(MODES)}, not {mode!r}")
    nc = await nats.connect(url)
    js = nc.jetstream()
    store = JetStreamEventStore(
        nc, registry, EventStoreSettings(stream="FLOOR_STORE", subject_prefix="floor.events")
    )
    await store.ensure_streams()
    await store.start()
    await js.add_stream(raw_stream("FLOOR_RAW", "floorraw.>"))
    # A stored event's bytes (the envelope around a typical DecisionAdded).
    first = [NewEvent(ev.DecisionAdded(decision_id="d-1", title="benchmarked decision"))]
    payload = store._messages("floor", first, store._encode("floor", first), 0, 0)[0].data
    # Only AddDecision is served; the base class answers UNIMPLEMENTED to the rest.
    servicer = Floor(mode, js, store, payload)  # type: ignore[abstract]
    endpoint = await start_grpc(
        lambda server: pb_grpc.add_ContextCommandServiceServicer_to_server(servicer, server),
        SERVICE,
        f"127.0.0.1:{port}",
        PublisherOptions.model_fields["max_concurrent_rpcs"].default,  # as the publisher
    )
    await stop_on_signals().wait()
    await endpoint.stop(1.0)
    await store.close()
    await nc.close()


def main() -> None:
    uvloop.run(
        serve(
            os.environ.get("FLOOR_MODE", "grpc"),
            int(os.environ["FLOOR_PORT"]),
            os.environ["FLOOR_NATS"],
        )
    )


if __name__ == "__main__":
    main()
