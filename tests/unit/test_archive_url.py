"""JETSOURCE_ARCHIVE__URL as a file URL: the path is percent-decoded (file URLs encode
a space as %20), and a URL naming a host (file://archive, read as the current folder)
is refused naming the URL, not used as an empty archive somewhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetsource.archive.objectstore import LocalObjectStore, ObjectStoreError, open_object_store
from jetsource.core.settings import check_archive_url


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///srv/dir%20with%20spaces/%C3%A4rchiv", "/srv/dir with spaces/ärchiv"),
        ("file://localhost/srv/archive", "/srv/archive"),
        ("file:///srv/archive", "/srv/archive"),
        ("/srv/a dir/ärchiv", "/srv/a dir/ärchiv"),  # a path is taken as it is
        ("rel/archive%20x", "rel/archive%20x"),
    ],
)
def test_a_file_url_names_its_folder(url: str, path: str) -> None:
    store = open_object_store(url)
    assert isinstance(store, LocalObjectStore) and store.root == Path(path)


@pytest.mark.parametrize("url", ["file://archive", "file://host/srv/archive", "file://"])
def test_a_file_url_with_a_host_or_no_path_is_refused(url: str) -> None:
    with pytest.raises(ObjectStoreError, match="file:///ABSOLUTE/PATH") as refused:
        open_object_store(url)
    assert repr(url) in str(refused.value)


@pytest.mark.parametrize("url", ["file://archive", "ftp://host/x", "s3:/bucket", "s3:///prefix"])
def test_a_bad_archive_url_is_refused_when_settings_load(url: str) -> None:
    """Checked with the other settings (exit 2 naming JETSOURCE_ARCHIVE__URL): the
    query service and the projector ended with a traceback when they opened it."""
    from pydantic import ValidationError

    from jetsource.core.settings import ArchiveSettings

    with pytest.raises(ValidationError, match="url"):
        ArchiveSettings(url=url)


@pytest.mark.parametrize("url", [None, "", "/srv/a dir", "rel", "file:///srv/a%20b", "s3://b/p"])
def test_a_good_archive_url_loads(url: str | None) -> None:
    from jetsource.core.settings import ArchiveSettings

    assert ArchiveSettings(url=url).url in (url, None)


@pytest.mark.parametrize(
    "url", ["https://AKIA:s3cret@minio/b", "file://AKIA:s3cret@host/srv/a", "ftp://a:s3cret@h/x"]
)
def test_a_refused_archive_url_does_not_show_its_credentials(url: str) -> None:
    """The settings check and the archive's opener printed the URL as given."""
    with pytest.raises(ValueError) as refused:
        check_archive_url(url)
    assert "s3cret" not in str(refused.value) and "***@" in str(refused.value)
    with pytest.raises(ObjectStoreError) as opened:
        open_object_store(url)
    assert "s3cret" not in str(opened.value)
