"""What each service process exports on /metrics, as a fresh process of that service
has it: its entrypoint module imported (with everything it imports) and the metrics it
registers while it starts (the snapshots model registers its counters when built)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Collection
from functools import cache

# service -> (entrypoint module, code run after the import, as the service does at start)
SERVICES: dict[str, tuple[str, str]] = {
    "publisher": ("jetsource.publisher.server", ""),
    "projector": ("jetsource.projector.server", ""),
    "snapshotter": (
        "jetsource.snapshotter.server",
        "from jetsource.domains.context.snapshots_model import register_metrics; "
        "register_metrics()",
    ),
    "query": ("jetsource.query.server", ""),
    # the process ledger's observer and process query service, and the omni ingress
    # (webhooks, REST reads and OmniQueryService in one process; the archiver and the
    # sessions pruner are CronJobs and CLI commands, the TUI serves no metrics)
    "observer": ("jetsource.observer.server", ""),
    "process-query": ("jetsource.processquery.server", ""),
    "ingest": ("jetsource.ingest.server", ""),
}

PROBE = """
import json, sys
import {module}
{start}
from prometheus_client import REGISTRY
print(json.dumps({{m.name: m.type for m in REGISTRY.collect() if m.name.startswith("jetsource")}}))
"""

# Sample names Prometheus stores for a family of each type (prometheus_client's naming).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


@cache
def families(service: str) -> dict[str, str]:
    """jetsource metric families (name -> type) a fresh process of ``service`` exports."""
    module, start = SERVICES[service]
    run = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, start=start)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def sample_names(service: str, skip: Collection[str] = ()) -> set[str]:
    """Every series name ``service`` can export (``_total``, ``_bucket``, ...), but those
    of the families in ``skip``."""
    return {
        name + suffix
        for name, kind in families(service).items()
        if name not in skip
        for suffix in SUFFIXES.get(kind, ("",))
    }


def all_sample_names() -> set[str]:
    return set().union(*(sample_names(s) for s in SERVICES))


def label_names(service: str, family: str) -> set[str]:
    """The label names of ``family`` in a fresh process of ``service``."""
    module, start = SERVICES[service]
    code = (
        f"import {module}\n{start}\n"
        "from prometheus_client import REGISTRY\n"
        f"print(' '.join(REGISTRY._names_to_collectors[{family!r}]._labelnames))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return set(run.stdout.split())
