"""The omni domain as the engine sees it: its stream, events and read models."""

from __future__ import annotations

import dataclasses

from jetsource.domains.omni.events import AGGREGATE_TYPE, STREAM, SUBJECT_PREFIX, registry
from jetsource.domains.omni.models import (
    OMNI_EVENTS,
    OMNI_IDENTITIES,
    build_events,
    build_identities,
    events_spec,
    identities_spec,
)
from jetsource.domains.omni.samples import sample_history
from jetsource.domains.omni.settings import OmniDomainSettings, OmniOptions
from jetsource.projection.domain import Domain, ModelDecl, Retention, StreamPolicy

DOMAIN = Domain(
    name="omni",
    stream=STREAM,
    subject_prefix=SUBJECT_PREFIX,
    aggregate_type=AGGREGATE_TYPE,
    registry=registry,
    models={
        OMNI_EVENTS: ModelDecl(events_spec, build_events),
        OMNI_IDENTITIES: ModelDecl(identities_spec, build_identities),
    },
    # Normalized events, their status and identities: kept (the raw payloads' own
    # retention is a setting of the OMNI_RAW stream).
    policy=StreamPolicy(Retention.FOREVER),
    services=("jetsource-ingest", "jetsource-projector"),
    sample_history=sample_history,
)


def omni_domain(options: OmniOptions) -> Domain:
    """The descriptor with the stream and subjects the settings name, if they do."""
    if not options.events_stream and not options.events_subject_prefix:
        return DOMAIN
    return dataclasses.replace(
        DOMAIN,
        stream=options.events_stream or DOMAIN.stream,
        subject_prefix=options.events_subject_prefix or DOMAIN.subject_prefix,
    )


def configured_domain() -> Domain:
    """The descriptor as this process's ``JETSOURCE_OMNI__EVENTS_STREAM`` and
    ``__EVENTS_SUBJECT_PREFIX`` move it (the registry's omni domain)."""
    return omni_domain(OmniDomainSettings().omni)
