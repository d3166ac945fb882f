"""Where archive segments and their manifest entries live: a small port and two
adapters (a local directory, the default; any S3-compatible store through
``obstore``). Both pass one contract suite (tests/integration/archive/).

Objects are written whole and never changed: a key is written once (``create_only``
refuses an existing one), so two archivers cannot overwrite each other's segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from jetsource.core.errors import JetsourceError
from jetsource.core.settings import archive_url_problem


class ObjectStoreError(JetsourceError):
    """The archive's object store refused or failed a request."""


class ObjectStore(Protocol):
    @property
    def location(self) -> str:
        """Where it is, for people (no secret)."""
        ...

    async def put(self, key: str, data: bytes, create_only: bool = False) -> bool:
        """Store ``data`` under ``key`` durably and whole; with ``create_only`` an
        existing key is left as it is and False returned."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        ...

    async def delete(self, key: str) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ObjectStoreError(f"invalid object key {key!r}")
    return key


class LocalObjectStore:
    """A directory: each object a file, written to a temporary name, fsynced and
    renamed into place (a reader never sees half an object)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def location(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _unusable(self, exc: OSError, doing: str) -> ObjectStoreError:
        """A folder that cannot be used (a file on the way, read-only, a full disk):
        said with the file and the setting, not a bare ``[Errno 20] Not a directory``."""
        where = exc.filename or self.root
        dangling = self._dangling()
        if dangling is not None:
            return dangling
        return ObjectStoreError(
            f"the archive at {self.root} cannot be {doing}: {exc.strerror or exc} ({where}); "
            "check JETSOURCE_ARCHIVE__URL"
        )

    def _dangling(self) -> ObjectStoreError | None:
        """The folder (or a folder above it) is a symbolic link to nothing: said so,
        not "File exists" on writing and "0 segments" on reading."""
        for at in (self.root, *self.root.parents):
            if at.is_symlink() and not at.exists():
                return ObjectStoreError(
                    f"the archive at {self.root} cannot be used: {at} is a symbolic link to "
                    f"{os.readlink(at)}, which does not exist; check JETSOURCE_ARCHIVE__URL"
                )
        return None

    def _put(self, key: str, data: bytes, create_only: bool) -> bool:
        try:
            return self._write(key, data, create_only)
        except OSError as exc:
            raise self._unusable(exc, "written") from exc

    def _write(self, key: str, data: bytes, create_only: bool) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if create_only:
                try:
                    os.link(tmp, path)  # atomic, and refuses an existing name
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def put(self, key: str, data: bytes, create_only: bool = False) -> bool:
        return await asyncio.to_thread(self._put, key, data, create_only)

    async def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unusable(exc, "read") from exc

    async def list(self, prefix: str) -> list[str]:
        def walk() -> list[str]:
            if not self.root.is_dir():
                dangling = self._dangling()
                if dangling is not None:
                    raise dangling
                if self.root.exists():  # a file: verify said "0 segments verified", exit 0
                    raise ObjectStoreError(
                        f"the archive at {self.root} is not a folder; check JETSOURCE_ARCHIVE__URL"
                    )
                return []
            out = []
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    if name.startswith(".tmp-"):
                        continue
                    key = Path(dirpath, name).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        out.append(key)
            return sorted(out)

        return await asyncio.to_thread(walk)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(key).unlink)


class S3ObjectStore:
    """Any S3-compatible store, through ``obstore``.
    Credentials come from the usual ``AWS_*`` variables or the instance's role."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
    ) -> None:
        try:
            from obstore.store import S3Store
        except ImportError as exc:  # pragma: no cover - a dependency of jetsource
            raise ObjectStoreError("an s3:// archive needs obstore (pip install obstore)") from exc
        kwargs: dict[str, Any] = {"prefix": prefix or None}
        if endpoint:
            kwargs["endpoint"] = endpoint
            if endpoint.startswith("http://"):  # a local S3-compatible server
                kwargs["client_options"] = {"allow_http": True}
        if region:
            kwargs["region"] = region
        self._store = S3Store(bucket, **kwargs)
        self._where = f"s3://{bucket}/{prefix}" + (f" at {endpoint}" if endpoint else "")

    @property
    def location(self) -> str:
        return self._where

    async def put(self, key: str, data: bytes, create_only: bool = False) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError

        try:
            await obstore.put_async(
                self._store, _check_key(key), data, mode="create" if create_only else None
            )
        except (AlreadyExistsError, FileExistsError):
            return False
        except Exception as exc:
            raise ObjectStoreError(f"{self._where}: put {key}: {exc}") from exc
        return True

    async def get(self, key: str) -> bytes | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = await obstore.get_async(self._store, _check_key(key))
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as exc:
            raise ObjectStoreError(f"{self._where}: get {key}: {exc}") from exc

    async def list(self, prefix: str) -> list[str]:
        import obstore

        out: list[str] = []
        try:
            async for batch in obstore.list(self._store, prefix or None):
                out.extend(str(meta["path"]) for meta in batch)
        except Exception as exc:
            raise ObjectStoreError(f"{self._where}: list {prefix}: {exc}") from exc
        return sorted(k for k in out if k.startswith(prefix))

    async def delete(self, key: str) -> None:
        import obstore

        try:
            await obstore.delete_async(self._store, _check_key(key))
        except Exception as exc:
            raise ObjectStoreError(f"{self._where}: delete {key}: {exc}") from exc


def open_object_store(
    url: str, endpoint: str | None = None, region: str | None = None
) -> ObjectStore:
    """``s3://bucket/prefix`` or a directory (a path or ``file:///path``)."""
    if problem := archive_url_problem(url):
        raise ObjectStoreError(f"archive url {problem}")
    parts = urlsplit(url)
    if parts.scheme == "s3":
        return S3ObjectStore(parts.netloc, parts.path.strip("/"), endpoint, region)
    if parts.scheme == "file":
        # file:///abs/path (percent-encoded as file URLs are: %20 a space). A host was
        # taken for nothing: file://archive was the current folder, and an encoded
        # path named another folder than the one meant, both read as an empty archive.
        return LocalObjectStore(Path(unquote(parts.path)))
    return LocalObjectStore(Path(url))
