"""observe import resumed over a file replaced at the same path: a longer new file was
resumed at the old offset (its first lines skipped, never recorded) and the error for a
shorter one advised another --state alone, with which the new lines took the old lines'
derived ids and were answered as duplicates. The position now keeps a digest of the last
recorded line; a file whose bytes there changed is refused, naming --source-id."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from jetsource.cli.observe import run_import
from jetsource.core.errors import ValidationError
from jetsource.domains.process.adapters import JsonlAdapter, PositionFile


def _write(path: Path, tag: str, n: int) -> None:
    path.write_text(
        "".join(
            json.dumps({"process_id": "p", "event_type": "step", "data": {tag: i}}) + "\n"
            for i in range(n)
        )
    )


def _recorded(path: Path, state: PositionFile) -> None:
    """Every line of ``path`` read and its position saved, as an import does."""
    adapter = JsonlAdapter.resume("S", state.load(), "jsonl")
    with open(path, "rb") as f:
        lines = list(adapter.lines(f, follow_partial=False))
    for line in lines:
        adapter.normalize(line)
    adapter.advance(lines[-1])
    state.save(adapter.position)


@pytest.mark.parametrize("new_lines", [3, 10], ids=["shorter", "longer"])
def test_a_file_replaced_at_its_path_is_found(tmp_path: Path, new_lines: int) -> None:
    path, state = tmp_path / "run.jsonl", PositionFile(tmp_path / "pos")
    _write(path, "old", 5)
    _recorded(path, state)
    _write(path, "new", new_lines)  # rotated: same path, other lines
    adapter = JsonlAdapter.resume("S", state.load(), "jsonl")
    with open(path, "rb") as f:
        assert adapter.replaced(f)
        importer = SimpleNamespace(path=path, adapter=adapter)
        with pytest.raises(ValidationError, match="--source-id") as refused:
            asyncio.run(run_import(importer, f, False, 0.1, asyncio.Event(), None))  # type: ignore[arg-type]
    assert refused.value.field == "state"


def test_a_grown_file_and_an_old_position_file_resume(tmp_path: Path) -> None:
    path, state = tmp_path / "run.jsonl", PositionFile(tmp_path / "pos")
    _write(path, "old", 5)
    _recorded(path, state)
    with open(path, "a") as f:
        f.write(json.dumps({"process_id": "p", "event_type": "step"}) + "\n")
    adapter = JsonlAdapter.resume("S", state.load(), "jsonl")
    with open(path, "rb") as f:
        assert not adapter.replaced(f)
    # A position saved before the digest was kept: resumed as before.
    old = {k: v for k, v in state.load().items() if k != "tail"}  # type: ignore[union-attr]
    with open(path, "rb") as f:
        assert not JsonlAdapter.resume("S", old, "jsonl").replaced(f)
