"""The omni ingress creates the raw archive (OMNI_RAW) and the handles bucket
(OMNI_HANDLES) with JETSOURCE_OMNI__RAW_REPLICAS, not the event stream's replicas: with
values-production.yaml's R3 streams they were R1, so losing one NATS node lost raw
payloads and the handle -> identity claims. The chart gives the ingress
config.eventstore.replicas for them."""

from __future__ import annotations

import pytest

from jetsource.ingest.settings import IngestSettings
from tests.deploy.chart import by_kind, loaded, manifests, pod_spec, render, values_file
from tests.deploy.test_helm_chart import environment


@pytest.mark.parametrize("replicas", [1, 3])
def test_the_ingress_creates_its_streams_at_the_event_streams_replicas(
    replicas: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = manifests(render({"config": {"eventstore": {"replicas": replicas}}}))
    ingest = by_kind(docs, "Deployment")["js-jetsource-ingest"]
    assert pod_spec(ingest)["containers"][0]["command"] == ["jetsource-ingest"]
    settings = loaded(monkeypatch, IngestSettings, environment(ingest, docs))
    assert settings.eventstore.replicas == replicas
    assert settings.omni.raw_replicas == replicas


def test_production_values_give_r3_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = manifests(render(values_file("values-production.yaml")))
    ingest = by_kind(docs, "Deployment")["js-jetsource-ingest"]
    settings = loaded(monkeypatch, IngestSettings, environment(ingest, docs))
    assert (settings.eventstore.replicas, settings.omni.raw_replicas) == (3, 3)
