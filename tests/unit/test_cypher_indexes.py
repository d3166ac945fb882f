"""Every key a graph read model looks nodes up by has an index or constraint.

A lookup on a key without one is a scan of the whole label, so its cost grows with the
label: the process graph asked on every batch which of its processes were pruned by
ProcessPruned.id, and a prune found its events by ProcessEvent.process, neither indexed
(245 ms a batch at 128,000 pruned processes, 4.8 ms indexed). The statements are the
ones the code sends (``tests/cypher_collect.py`` runs the real code paths); a lookup is
a node pattern's key map (``(n:Label {key: ...})``) or a ``WHERE n.key IN $list``.
"""

from __future__ import annotations

import re

from tests.cypher_collect import Statement, collect, distinct

# One node per model and version: a scan is one node.
SINGLE_NODE = re.compile(r"Checkpoint_v\d+$")

_DECLARED = re.compile(r"FOR \(n:(\w+)\) (?:REQUIRE|ON) \(?n\.(\w+)")
_NODE = re.compile(r"\((\w+):(\w+)(?: \{(\w+):)?")
_IN = re.compile(r"\b(\w+)\.(\w+) IN \$")
_CREATED = re.compile(r"\bCREATE (\([^)]*\)[^A-Z]*)+")  # made, not looked up


def lookups(statement: str) -> set[tuple[str, str]]:
    labels: dict[str, str] = {}
    found: set[tuple[str, str]] = set()
    for var, label, key in _NODE.findall(_CREATED.sub("", statement)):
        labels[var] = label
        if key:
            found.add((label, key))
    for var, key in _IN.findall(statement):
        if var in labels:
            found.add((labels[var], key))
    return {(label, key) for label, key in found if not SINGLE_NODE.search(label)}


def unindexed(statements: list[Statement]) -> dict[tuple[str, str], str]:
    declared = {pair for s in statements for pair in _DECLARED.findall(s.query)}
    out: dict[tuple[str, str], str] = {}
    for s in statements:
        for pair in lookups(s.query) - declared:
            out.setdefault(pair, f"{s.site[0]}:{s.site[1]}: {s.query[:120]}")
    return out


def test_every_key_a_graph_model_looks_up_has_an_index() -> None:
    statements = distinct(collect())
    assert any("Pruned" in label for s in statements for label, _ in lookups(s.query))
    assert unindexed(statements) == {}


def test_the_check_sees_a_lookup_without_an_index() -> None:
    made = [
        Statement("CREATE INDEX a_k IF NOT EXISTS FOR (n:A_v1) ON (n.k)", (), ("x", 1)),
        Statement("MATCH (a:A_v1 {k: $k}) MATCH (b:B_v1) WHERE b.j IN $js RETURN a", (), ("x", 2)),
        Statement("MATCH (c:Checkpoint_v1 {model: $m}) RETURN c", (), ("x", 3)),
        Statement("CREATE (n:F_v1 {token: $t})", (), ("x", 4)),
    ]
    assert set(unindexed(made)) == {("B_v1", "j")}
