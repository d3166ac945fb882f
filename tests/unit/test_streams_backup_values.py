"""`jetsource streams restore` reading a backup whose manifest or files were damaged or
edited: any JSON value where the backup writes a number or a name is refused naming the
file (BackupError: exit 1, nothing restored). A manifest's ``messages`` or a line's
``seq`` of 1e400 (JSON ``Infinity``) answered ``INTERNAL: unexpected OverflowError``, a
``first_seq`` holding an object ``INTERNAL: unexpected TypeError`` (after the restore had
connected), ``true`` was read as 1. Found by generated inputs (fuzz5, round 5)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetsource.cli.stream_admin import BACKUP_FORMAT, MANIFEST, BackupError, _check_file, _manifest

ODD = st.one_of(
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e400, -1, 1.5, True, None]),
    st.sampled_from(["3", "", {"x": 1}, [3], 10**30]),
    st.integers(-5, 5),
)
LINE = {"seq": 1, "subject": "s.a", "headers": {}, "data": base64.b64encode(b"m").decode()}


def backup(folder: Path, entry: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    body = "".join(json.dumps(r) + "\n" for r in [{"config": {"name": "S"}}, *rows]).encode()
    (folder / "S.jsonl").write_bytes(body)
    entry = {"role": "events", "stream": "S", "file": "S.jsonl", **entry}
    entry.setdefault("sha256", hashlib.sha256(body).hexdigest())
    manifest = {"format": BACKUP_FORMAT, "streams": [entry]}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def read(folder: Path) -> list[dict[str, Any]]:
    entries, _, _ = _manifest(folder)
    for entry in entries:
        _check_file(folder, entry)
    return entries


@settings(max_examples=80, derandomize=True, deadline=None)
@given(
    key=st.sampled_from(["messages", "first_seq", "last_seq", "bucket", "horizons_of", "seq"]),
    value=ODD,
)
def test_any_value_where_a_number_or_name_goes_is_refused_or_read_as_written(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: Any
) -> None:
    folder = tmp_path_factory.mktemp("backup")
    entry: dict[str, Any] = {"messages": 1, "first_seq": 1, "last_seq": 1}
    rows = [dict(LINE)]
    if key == "seq":
        rows[0]["seq"] = value
    else:
        entry[key] = value
    backup(folder, entry, rows)
    try:
        (read_entry,) = read(folder)
    except BackupError:
        return
    for name in ("messages", "first_seq", "last_seq"):
        assert type(read_entry[name]) is int and read_entry[name] >= 0, (name, read_entry)
    for name in ("bucket", "horizons_of"):
        assert isinstance(read_entry.get(name) or "", str)


@pytest.mark.parametrize(
    ("key", "value"),
    [("messages", float("inf")), ("first_seq", {"x": 1}), ("messages", True), ("seq", 1e400)],
)
def test_minimal_examples(tmp_path: Path, key: str, value: Any) -> None:
    entry: dict[str, Any] = {"messages": 1, "first_seq": 1, "last_seq": 1}
    rows = [dict(LINE)]
    if key == "seq":
        rows[0]["seq"] = value
    else:
        entry[key] = value
    backup(tmp_path, entry, rows)
    with pytest.raises(BackupError, match=str(tmp_path)):
        read(tmp_path)


def test_a_good_backup_still_reads(tmp_path: Path) -> None:
    backup(tmp_path, {"messages": 1, "first_seq": 1, "last_seq": 1}, [dict(LINE)])
    assert read(tmp_path)[0]["messages"] == 1
