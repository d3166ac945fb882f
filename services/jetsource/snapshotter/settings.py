from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from jetsource.core.settings import Port
from jetsource.domains.context.snapshots_model import SNAPSHOTS
from jetsource.projection.settings import ProjectorOptions, ProjectorSettings


class SnapshotterOptions(ProjectorOptions):
    """``JETSOURCE_SNAPSHOTTER__...``: the projector runtime's options, for the one
    ``snapshots`` model. How often and how many snapshots: ``JETSOURCE_SNAPSHOTS__...``."""

    ENV_SECTION: ClassVar[str] = "SNAPSHOTTER"

    http_port: Port = 9103
    models: list[str] = Field(default_factory=lambda: [SNAPSHOTS])


class SnapshotterSettings(ProjectorSettings):
    snapshotter: SnapshotterOptions = SnapshotterOptions()

    def runtime(self) -> ProjectorSettings:
        """Settings for the projector runtime, with the snapshotter's options."""
        return ProjectorSettings.model_construct(
            **{
                name: getattr(self, name)
                for name in ProjectorSettings.model_fields
                if name != "projector"
            },
            projector=self.snapshotter,
        )
