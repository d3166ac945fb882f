"""An archive folder that is a symbolic link to nothing (a volume not mounted, a
target removed): writing said "File exists" (mkdir of the link's name) and listing
said nothing at all, so `archive verify` and `archive list` reported 0 segments. Both
now name the link, its target and the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetsource.archive.objectstore import LocalObjectStore, ObjectStoreError


@pytest.mark.parametrize("below", [False, True])
async def test_a_dangling_link_is_named(tmp_path: Path, below: bool) -> None:
    link = tmp_path / "archive"
    link.symlink_to(tmp_path / "unmounted")
    store = LocalObjectStore(link / "jetsource" if below else link)
    with pytest.raises(ObjectStoreError, match=r"symbolic link to .*unmounted, which does not"):
        await store.put("CONTEXT_EVENTS/manifest.json", b"{}")
    with pytest.raises(ObjectStoreError, match="JETSOURCE_ARCHIVE__URL"):
        await store.list("CONTEXT_EVENTS/")
    assert not (tmp_path / "unmounted").exists()  # nothing was made at the target


async def test_a_missing_folder_is_still_made_and_empty(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "new" / "archive")
    assert await store.list("") == []
    assert await store.put("S/k", b"x")
    assert await store.list("S/") == ["S/k"]
