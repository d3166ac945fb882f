"""pyeventsourcing 9 (package ``eventsourcing``, the ``bench`` extra) as the peer.

Configurations, each labelled in the tables:
  - ``plain``: an Application on SQLite (file), no snapshots (its default);
  - ``snapshots``: the same with ``snapshotting_intervals = {Story: 100}``, its documented
    way to serve long histories (a snapshot is taken whenever a saved event's version is
    a multiple of 100; ``repository.get`` starts from the newest snapshot at or before
    the version asked for);
  - ``snapshots+cache``: snapshots and its aggregate cache (``AGGREGATE_CACHE_MAXSIZE``,
    fast-forwarded from the database on each get, its default when the cache is on):
    the peer's counterpart of the publisher's cached fold.

The Story aggregate holds decisions by id (title), like the context domain's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

SNAPSHOT_EVERY = 100
CONFIGS = ("plain", "snapshots", "snapshots+cache")
LABELS = {
    "plain": "pyeventsourcing, SQLite, no snapshots",
    "snapshots": f"pyeventsourcing, SQLite, snapshots every {SNAPSHOT_EVERY}",
    "snapshots+cache": (
        f"pyeventsourcing, SQLite, snapshots every {SNAPSHOT_EVERY} + aggregate cache"
    ),
}

_classes: tuple[Any, Any, Any] | None = None


def _define() -> tuple[Any, Any, Any]:
    global _classes
    if _classes is not None:
        return _classes
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Story(Aggregate):
        @event("Created")
        def __init__(self, title: str) -> None:
            self.title = title
            self.decisions: dict[str, str] = {}

        @event("DecisionAdded")
        def add_decision(self, decision_id: str, title: str) -> None:
            if decision_id in self.decisions:
                raise ValueError(f"decision {decision_id} exists")
            self.decisions[decision_id] = title

        @event("DecisionRevised")
        def revise_decision(self, decision_id: str, title: str) -> None:
            if decision_id not in self.decisions:
                raise ValueError(f"no decision {decision_id}")
            self.decisions[decision_id] = title

    class Stories(Application[UUID]):
        pass

    class SnapshottingStories(Application[UUID]):
        snapshotting_intervals = {Story: SNAPSHOT_EVERY}  # noqa: RUF012

    _classes = (Story, Stories, SnapshottingStories)
    return _classes


def available() -> bool:
    try:
        import eventsourcing  # noqa: F401
    except ImportError:
        return False
    return True


def make_app(path: Path, config: str) -> tuple[Any, Any]:
    """(application, Story class) on a SQLite file at ``path``."""
    story, plain, snapshotting = _define()
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    if config == "snapshots+cache":
        env["AGGREGATE_CACHE_MAXSIZE"] = "10000"
    cls = plain if config == "plain" else snapshotting
    return cls(env=env), story


def seed_story(app: Any, story_cls: Any, history: int, live: int | None = None) -> Any:
    """One story of ``history`` events saved at once (snapshots taken as they would be
    had it been saved command by command): a Created, then DecisionAdded until
    ``live`` decisions exist, then DecisionRevised of them in turn."""
    story = story_cls(title="peer story")
    for i in range(history - 1):
        if live is None or i < live:
            story.add_decision(f"seed-{i}", f"seeded decision {i} with a typical title")
        else:
            story.revise_decision(f"seed-{i % live}", f"revised decision {i} with a typical title")
    app.save(story)
    return story.id
