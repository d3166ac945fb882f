"""The snapshotter runs the projector runtime under JETSOURCE_SNAPSHOTTER__...: a bad
domains module it was given was named as JETSOURCE_PROJECTOR__DOMAINS, a variable the
snapshotter does not read, so the operator fixed the wrong one."""

from __future__ import annotations

import pytest

from jetsource.projection.bootstrap import DomainsError, open_projection
from jetsource.projection.settings import ProjectorSettings
from jetsource.snapshotter.settings import SnapshotterSettings


async def test_the_snapshotter_names_its_own_domains_variable() -> None:
    runtime = SnapshotterSettings.model_validate(
        {"snapshotter": {"domains": "nosuch_module_x:REGISTRY"}}
    ).runtime()
    with pytest.raises(DomainsError) as refused:
        await open_projection(runtime)
    assert "JETSOURCE_SNAPSHOTTER__DOMAINS='nosuch_module_x:REGISTRY'" in str(refused.value)


async def test_the_projector_names_its_own() -> None:
    settings = ProjectorSettings.model_validate({"projector": {"domains": "nosuch_module_x"}})
    with pytest.raises(DomainsError) as refused:
        await open_projection(settings)
    assert "JETSOURCE_PROJECTOR__DOMAINS='nosuch_module_x'" in str(refused.value)
