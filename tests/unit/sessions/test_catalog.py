"""The event catalog: shipped, versioned, a schema per type; validation off/warn/strict."""

from __future__ import annotations

import json
import logging

import pytest
from jsonschema import Draft202012Validator

from jetsource.domains.sessions.catalog import CatalogViolation, Validation, load_catalog

ISSUE_TYPES = {
    "session": ["session_started", "session_ended"],
    "context_generate": [
        "plan_constructed",
        "descendant_check_started",
        "descendant_check_passed",
        "descendant_check_failed",
        "node_skipped",
    ],
    "orchestrator": [
        "generation_started",
        "generation_completed",
        "generation_failed",
        "level_started",
        "level_completed",
        "node_generation_started",
        "node_generation_completed",
        "node_generation_failed",
    ],
    "queue": ["request_enqueued", "request_deduplicated", "request_processing", "queue_stats"],
    "provider": [
        "provider_request_sent",
        "provider_response_received",
        "provider_request_failed",
        "provider_request_retrying",
    ],
    "scanner": ["scan_started", "scan_progress", "scan_completed"],
    "watcher": ["watch_started", "file_changed", "batch_processed"],
}


def test_every_type_the_issue_lists_has_a_valid_json_schema_in_its_group() -> None:
    c = load_catalog()
    assert c.version.count(".") == 2
    for group, names in ISSUE_TYPES.items():
        assert group in c.groups
        for name in names:
            spec = c.events[name]
            assert spec.group == group
            Draft202012Validator.check_schema(spec.schema)
            assert spec.schema["type"] == "object"
            # consumers ignore unknown fields: no schema closes its object
            assert spec.schema["additionalProperties"] is True


def test_the_printed_document_is_json_and_holds_every_schema() -> None:
    c = load_catalog()
    text = json.dumps(c.as_document())
    back = json.loads(text)
    found = {t for g in back["groups"].values() for t in g["events"]}
    assert found == set(c.events)
    assert back["version"] == c.version


def test_strict_refuses_a_known_type_with_bad_data_naming_the_field() -> None:
    c = load_catalog()
    with pytest.raises(CatalogViolation) as info:
        c.check("node_generation_failed", {"node_id": "n1"}, Validation.STRICT)
    assert "error" in str(info.value)
    with pytest.raises(CatalogViolation, match="data/level"):
        c.check("level_started", {"level": "zero"}, "strict")


def test_warn_logs_and_keeps_off_checks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    c = load_catalog()
    with caplog.at_level(logging.WARNING):
        found = c.check("level_started", {"level": -1}, Validation.WARN)
    assert found and "does not match the catalog" in caplog.text
    assert c.check("level_started", {"level": -1}, Validation.OFF) == []


def test_unknown_types_and_unknown_fields_pass_in_every_mode() -> None:
    c = load_catalog()
    for mode in Validation:
        assert c.check("brand_new_thing", {"whatever": [1]}, mode) == []
        assert c.check("level_started", {"level": 1, "colour": "blue"}, mode) == []


def test_the_envelope_schema_matches_the_format() -> None:
    c = load_catalog()
    good = {"ts": "2026-12-02T21:40:00.123Z", "session": "s1", "seq": 1, "type": "a_b", "data": {}}
    assert c.envelope_problems(good) == []
    assert c.envelope_problems({**good, "ts": "2026-12-02T21:40:00Z"})
    assert c.envelope_problems({**good, "seq": 0})
