"""The local bucket: a directory whose relative paths are the S3 keys."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from distracted_driver.fsutil import atomic_path, write_bytes_atomic
from distracted_driver.hashing import sha256_file
from distracted_driver.storage.base import KeyNotFound, Storage


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid key {key!r}")
        return self.root / key

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def put_file(self, path: str | Path, key: str) -> bool:
        if self.checksum(key) == sha256_file(path):
            return False
        with atomic_path(self._path(key)) as tmp:
            shutil.copyfile(path, tmp)
        return True

    def get_file(self, key: str, path: str | Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise KeyNotFound(key)
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)

    def put_bytes(self, key: str, data: bytes) -> None:
        write_bytes_atomic(self._path(key), data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise KeyNotFound(key) from None

    def create_exclusive(self, key: str, data: bytes) -> bool:
        # Write the full content under a temporary name, then hard-link it into
        # place: link() fails if the name exists, so creation is exclusive and
        # a reader never sees a partial file.
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def checksum(self, key: str) -> str | None:
        path = self._path(key)
        return sha256_file(path) if path.is_file() else None

    def list_keys(self, prefix: str = "") -> list[str]:
        keys = []
        folder = self.root / prefix.rpartition("/")[0]  # walk only the prefix's folder, not the whole bucket
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
