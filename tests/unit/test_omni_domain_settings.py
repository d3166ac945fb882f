"""The registry's omni domain follows ``JETSOURCE_OMNI__EVENTS_STREAM`` and
``__EVENTS_SUBJECT_PREFIX``, as the ingress does: the projector and the CLI loaded the
descriptor's OMNI_EVENTS whatever the settings said, so with the events moved the ingress
wrote one stream while the omni read models (and `projector status`) read another."""

from __future__ import annotations

import pytest

from jetsource import domains
from jetsource.domains.omni.descriptor import DOMAIN
from jetsource.projection.domain import Domain
from jetsource.projection.settings import ProjectorSettings


def _omni() -> Domain:
    registry = domains.registry.__wrapped__()  # built afresh, not the process's cached one
    found: Domain = next(d for d in registry if d.name == DOMAIN.name)
    return found


def test_the_registry_takes_the_moved_stream_and_subjects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETSOURCE_OMNI__EVENTS_STREAM", "OMNI_SIDE")
    monkeypatch.setenv("JETSOURCE_OMNI__EVENTS_SUBJECT_PREFIX", "side.omni")
    omni = _omni()
    assert (omni.stream, omni.subject_prefix) == ("OMNI_SIDE", "side.omni")
    store = omni.eventstore(ProjectorSettings())
    assert (store.stream, store.subject_prefix) == ("OMNI_SIDE", "side.omni")
    assert set(omni.models) == set(DOMAIN.models)


def test_without_the_settings_it_is_the_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JETSOURCE_OMNI__EVENTS_STREAM", raising=False)
    monkeypatch.delenv("JETSOURCE_OMNI__EVENTS_SUBJECT_PREFIX", raising=False)
    assert _omni() is DOMAIN
