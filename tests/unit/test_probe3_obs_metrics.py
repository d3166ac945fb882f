"""Metric labels come from bounded sets: a value a client chooses cannot make a series
of its own. The ingest's REST metrics were labelled by the request's raw HTTP method:
uvicorn without httptools (h11) passes any token, so 1,000 made-up methods made 1,000
series of ``jetsource_omni_api_requests_total``."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from prometheus_client import REGISTRY

from jetsource.ingest.app import RequestMetrics


def _methods() -> set[str]:
    return {
        sample.labels["method"]
        for family in REGISTRY.collect()
        if family.name == "jetsource_omni_api_requests"
        for sample in family.samples
    }


async def _not_allowed(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 405, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _send(_: MutableMapping[str, Any]) -> None:
    return None


def test_a_method_a_client_makes_up_is_counted_as_other() -> None:
    metrics = RequestMetrics(_not_allowed)

    async def requests() -> None:
        for method in [f"X{i}" for i in range(1000)] + ["PROPFIND", "GET", "POST"]:
            scope = {"type": "http", "method": method, "path": "/api/v1/no-such-route"}
            await metrics(scope, None, _send)

    asyncio.run(requests())
    methods = _methods()
    assert not any(m.startswith("X") for m in methods), sorted(methods)[:10]
    assert "PROPFIND" not in methods
    assert {"GET", "POST", "other"} <= methods
