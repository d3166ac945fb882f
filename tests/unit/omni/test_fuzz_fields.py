"""Every field of every fixture, removed or given a wrong type: the normalizer either copes or
raises Malformed / Unrecognised (which the ingress turns into a clear answer); never a
KeyError, TypeError or AttributeError that would become a 500 and a provider retrying."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from jetsource.domains.omni.normalize import Malformed, Unrecognised, normalize
from tests.fixtures.omni import FIXTURES, RECEIVED_AT, Fixture

WRONG: list[Any] = [
    None,
    42,
    -1,
    2**70,
    1e300,
    float("nan"),
    float("inf"),
    "",
    "x",
    "-5",
    True,
    [],
    {},
    [1],
    {"low": -1},
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*path, k)
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*path, i)
            yield from _paths(v, (*path, i))


def _mutants(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _paths(body):
        parent_path, last = path[:-1], path[-1]
        for replacement in [_DELETE, *WRONG]:
            mutant = copy.deepcopy(body)
            parent: Any = mutant
            for step in parent_path:
                parent = parent[step]
            if replacement is _DELETE:
                if isinstance(parent, dict):
                    del parent[last]
                else:
                    parent.pop(last)
            else:
                parent[last] = replacement
            yield f"{path}={replacement!r}", mutant


_DELETE = object()


@pytest.mark.parametrize(
    "fixture", [f for f in FIXTURES if f.outcome == "normalized"], ids=lambda f: f.path
)
def test_every_field_removed_or_mistyped_fails_cleanly(fixture: Fixture) -> None:
    body = fixture.body()
    tried = 0
    for label, mutant in _mutants(body):
        tried += 1
        try:
            events = normalize(fixture.provider, fixture.instance, mutant, RECEIVED_AT, "r")
        except (Malformed, Unrecognised) as exc:
            if isinstance(exc, Malformed):
                assert exc.field, label
            continue
        except Exception as exc:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"{fixture.path} {label}: {type(exc).__name__}: {exc}")
        for ev in events:
            assert ev.provider_event_id, label
            assert ev.id, label
    assert tried > 0
