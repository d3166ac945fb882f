"""The query service on a compacted stream (real NATS, Valkey and graph store, gRPC):
GetContextAtVersion / AtTime and ListEvents before the horizon read the archive and
equal a full fold of the original history; a query service that does not read the
archive answers FAILED_PRECONDITION naming the horizon (reason BEFORE_HORIZON)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from jetsource._gen.context.v1 import query_pb2 as q
from jetsource.client import QueryClient
from jetsource.core.settings import ArchiveSettings, JetsourceSettings
from jetsource.domains.context.serialize import state_to_dict
from jetsource.domains.context.views import context_view, event_view
from jetsource.projection.bootstrap import open_projection
from jetsource.query.server import build as build_query
from jetsource.query.settings import QueryOptions, QuerySettings
from tests.history_fixtures import append_history, probe_times, save_snapshots, state_at
from tests.integration.archive.fixtures import compact_at, compacting_settings, middle_time

pytestmark = pytest.mark.integration


def _query_settings(base: object, read_archive: bool) -> QuerySettings:
    shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
    shared["archive"] = shared["archive"].model_copy(update={"read": read_archive})
    return QuerySettings(
        **shared,
        projector=base.projector,  # type: ignore[attr-defined]
        query=QueryOptions(grpc_port=0, metrics_port=0),
    )


async def test_query_service_reads_across_the_horizon(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> None:
    base = compacting_settings(settings, unique, tmp_path / "archive")
    assert isinstance(base.archive, ArchiveSettings)
    p = await open_projection(base)
    try:
        records = await append_history(p.store, "qh", 36, seed=11, group_sizes=[1, 2])
        await save_snapshots(p.snapshots, records, [10, 20, 30])
        await compact_at(p, middle_time(records, 0.7))
        horizon = await p.store.horizon("qh")
        assert horizon is not None and horizon.version >= 20
    finally:
        await p.close()

    query = await build_query(_query_settings(base, read_archive=True))
    blind = await build_query(_query_settings(base, read_archive=False))
    reads = QueryClient(f"127.0.0.1:{query.port}", timeout=10.0)
    blind_reads = QueryClient(f"127.0.0.1:{blind.port}", timeout=10.0)
    try:
        for v in range(1, len(records) + 1):
            answer = await reads.at_version("qh", v)
            assert answer.context == context_view(state_to_dict(state_at(records, v))), v
        for t in probe_times(records)[1:]:  # the first is before the context existed
            at_time = await reads.at_time("qh", t)
            assert at_time.context == context_view(state_to_dict(state_at(records, until=t)))
        listed: list[q.EventView] = []
        token = ""
        while True:
            page = await reads.list_events("qh", limit=7, page_token=token)
            listed.extend(page.events)
            token = page.next_page_token
            if not token:
                break
        assert list(listed) == [event_view(r) for r in records]

        # Without the archive: before the horizon is refused, naming it; after, served.
        for call in (
            blind_reads.at_version("qh", horizon.version - 1),
            blind_reads.at_time("qh", records[1].recorded_at_ns),
            blind_reads.list_events("qh", from_version=1, limit=5),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"versions 1..{horizon.version}" in (caught.value.details() or "")
            status = rpc_status.from_call(caught.value)
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert info.reason == "BEFORE_HORIZON"
            assert info.metadata["horizon_version"] == str(horizon.version)
        ok = await blind_reads.at_version("qh", len(records))
        assert ok.context == context_view(state_to_dict(state_at(records, len(records))))
    finally:
        await reads.close()
        await blind_reads.close()
        await query.stop(0)
        await blind.stop(0)


def test_archive_faults_have_their_own_status() -> None:
    from jetsource.archive.objectstore import ObjectStoreError
    from jetsource.archive.segment import SegmentError
    from jetsource.domains.context.query_service import _query_error

    damaged = _query_error(SegmentError("segments/X/1-2-ab.seg: checksum differs"))
    assert damaged is not None and damaged.code == grpc.StatusCode.DATA_LOSS
    assert "1-2-ab.seg" in damaged.message
    away = _query_error(ObjectStoreError("s3://b/p: get x: connection refused"))
    assert away is not None and away.code == grpc.StatusCode.UNAVAILABLE
