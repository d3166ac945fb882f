"""Every context read model (context, timeline, graph, snapshots) dead-letters a newer
release's events and applies them after the upgrade, as the fast integration test
checks for one (tests/integration/test_newer_release_events.py): ~18 s for the four."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from jetsource.projection.bootstrap import Projection
from tests.integration.test_newer_release_events import (  # noqa: F401 (the fixtures)
    newer_release_path,
    upgrade,
)
from tests.integration.test_poison import MODELS, projection  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]


async def test_every_model_dead_letters_a_newer_releases_event_and_applies_it_after_the_upgrade(
    projection: Projection,  # noqa: F811
    upgrade: Callable[[], None],  # noqa: F811
) -> None:
    await newer_release_path(projection, upgrade, MODELS)
