"""Neo4j 5 fidelity without a Neo4j server.

Every Cypher statement the graph read model sends (collected by running the code, see
``tests/cypher_collect.py``) goes through Neo4j's own grammar and semantic analysis
(``@neo4j-cypher/language-support`` from npm, run by ``scripts/cypher-lint.mjs``), so
a statement ArcadeDB accepts but Neo4j 5 would reject fails here. The package is
installed by ``make cypher-lint`` (part of ``make lint``) where npm exists; without it
these tests are skipped, saying why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cypher_collect import (
    ROOT,
    SOURCES,
    Statement,
    collect,
    cypher_literals,
    distinct,
    source_sites,
    uncovered,
)

SCRIPT = ROOT / "scripts" / "cypher-lint.mjs"
PACKAGE = ROOT / ".tools" / "node_modules" / "@neo4j-cypher" / "language-support"
NODE = shutil.which("node")


def _why_not() -> str | None:
    if NODE is None or shutil.which("npm") is None:
        return "npm not found (Neo4j's Cypher analysis, @neo4j-cypher/language-support, is on npm)"
    if not (PACKAGE / "package.json").exists():
        return "@neo4j-cypher/language-support not installed under .tools: run `make cypher-lint`"
    return None


needs_node = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def lint(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(SCRIPT)],
        input=json.dumps(statements),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode in (0, 1), f"cypher-lint could not run: {done.stderr}"
    report = json.loads(done.stdout)
    assert report["version"] == "CYPHER 5"
    results: list[dict[str, Any]] = report["results"]
    assert len(results) == len(statements)
    has_error = any(d["severity"] == "error" for r in results for d in r["diagnostics"])
    assert (done.returncode == 1) == has_error
    return results


def _errors(result: dict[str, Any]) -> list[str]:
    return [d["message"] for d in result["diagnostics"] if d["severity"] == "error"]


@pytest.fixture(scope="module")
def statements() -> list[Statement]:
    return collect()


def test_the_collector_drives_every_statement_in_the_code(statements: list[Statement]) -> None:
    """Every ``session.run``/``tx.run`` of the graph code was called, and every Cypher
    literal in it shows in some collected statement."""
    assert len(source_sites()) >= 15
    assert len(cypher_literals()) >= 20
    assert uncovered(statements) == []
    sites = {s.site[0] for s in statements}
    assert "services/jetsource/domains/context/graph_model.py" in sites


def test_the_coverage_check_sees_a_statement_never_sent(
    statements: list[Statement], tmp_path: Path
) -> None:
    extra = tmp_path / "extra.py"
    extra.write_text(
        "async def f(session, label):\n"
        "    await session.run(f'MATCH (n:{label}) WHERE n.orphan RETURN n')\n"
        "HELPER = '(x:{…} {ghost: $ghost})'\n"
    )
    gaps = uncovered(statements, [*SOURCES, extra])
    assert len(gaps) == 3, gaps  # the call, its literal, the lone fragment
    assert all(str(extra) in g for g in gaps)


@needs_node
def test_every_graph_statement_passes_neo4j_5_analysis(statements: list[Statement]) -> None:
    unique = distinct(statements)
    assert len(unique) >= 40
    results = lint([s.as_json() for s in unique])
    problems = [
        f"{r['site']}: {r['query']}\n    {d['severity']}: {d['message']} (at {d.get('excerpt')!r})"
        for r in results
        for d in r["diagnostics"]
    ]
    # Warnings fail too: a deprecation in Neo4j 5 is a removal in the next Cypher.
    assert problems == [], "Neo4j 5 would reject or warn about:\n" + "\n".join(problems)


# Statements Neo4j 5 rejects. The first is accepted by ArcadeDB (26.10, checked through
# arcadedb_embedded): its Cypher still has the property-existence function Neo4j 5
# removed. The rest are syntax Neo4j 4 had, an APOC function (no plugin on the
# server), a variable out of scope, a parameter the code does not pass.
REJECTED: list[tuple[dict[str, Any], str]] = [
    ({"query": "MATCH (n:Story_v1) WHERE exists(n.title) RETURN n.key AS key"}, "exists"),
    ({"query": "CREATE INDEX ON :Story_v1(key)"}, "CREATE INDEX FOR"),
    ({"query": "CREATE CONSTRAINT ON (n:Story_v1) ASSERT n.key IS UNIQUE"}, "ASSERT"),
    ({"query": "MATCH (n:Story_v1) RETURN apoc.map.clean(properties(n), [], []) AS p"}, "apoc"),
    ({"query": "MATCH (n:Story_v1) WITH n.key AS k RETURN n"}, "Variable `n` not defined"),
    ({"query": "MATCH (n:Story_v1 {key: $key}) RETURN n.key AS k", "parameters": []}, "$key"),
]


@needs_node
def test_the_check_fails_on_statements_neo4j_5_rejects() -> None:
    results = lint([q for q, _ in REJECTED])
    for (query, expected), result in zip(REJECTED, results, strict=True):
        errors = _errors(result)
        assert errors, f"Neo4j 5 rejects, the check passed: {query['query']}"
        assert any(expected in e for e in errors), (query, errors)


@needs_node
def test_a_real_statement_made_arcadedb_only_fails(statements: list[Statement]) -> None:
    """The collected statements themselves, altered as an ArcadeDB-tested change could
    alter them, fail: the check reads what the code sends."""
    guard = next(s for s in statements if "coalesce(n.seq, 0) < r.seq" in s.query)
    altered = guard.as_json()
    altered["query"] = guard.query.replace(
        "coalesce(n.seq, 0) < r.seq", "(NOT exists(n.seq) OR n.seq < r.seq)"
    )
    unpassed = next(s for s in statements if s.parameters == ("key",)).as_json()
    unpassed["parameters"] = []
    fine, changed, missing = lint([guard.as_json(), altered, unpassed])
    assert _errors(fine) == []
    assert any("exists" in e for e in _errors(changed)), changed
    assert any("$key" in e for e in _errors(missing)), missing
