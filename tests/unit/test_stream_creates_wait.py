"""Every STREAM.CREATE a service or an admin command sends waits for a NATS cluster
that cannot place the stream yet (``jsapi.create_waiting``: no meta leader, a peer
offline). The services' creates did since d4d358e; `streams restore`, `archive restore`
and the reshape of a stream (allowing purges) still sent one request, so against a
cluster electing a leader they failed with a bare timeout or a 503. A create written
outside ``create_waiting`` fails this test."""

from __future__ import annotations

import ast
from pathlib import Path

import jetsource

ROOT = Path(jetsource.__file__).parent


def _creates_outside_waiting(tree: ast.AST) -> list[int]:
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.JoinedStr) or not node.values:
            continue
        first = node.values[0]
        if not (isinstance(first, ast.Constant) and str(first.value).startswith("STREAM.CREATE.")):
            continue
        at: ast.AST | None = node
        waited = False
        while at is not None:
            up = parents.get(at)
            if isinstance(at, ast.Lambda) and isinstance(up, ast.Call):
                fn = up.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                waited = name == "create_waiting"
                break
            at = up
        if not waited:
            found.append(node.lineno)
    return found


def test_every_stream_create_waits_for_the_cluster() -> None:
    outside = {
        str(path.relative_to(ROOT)): lines
        for path in sorted(ROOT.rglob("*.py"))
        if "_gen" not in path.parts
        and (lines := _creates_outside_waiting(ast.parse(path.read_text(), str(path))))
    }
    assert not outside, f"STREAM.CREATE sent outside jsapi.create_waiting: {outside}"


def test_the_check_finds_a_bare_create() -> None:
    bare = ast.parse('await api(r, f"STREAM.CREATE.{name}", config, 5)')
    waited = ast.parse('await create_waiting(lambda: api(r, f"STREAM.CREATE.{n}", c, 5), n, 3)')
    assert _creates_outside_waiting(bare) == [1]
    assert _creates_outside_waiting(waited) == []
