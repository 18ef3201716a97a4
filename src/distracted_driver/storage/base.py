"""What every bucket backend offers. Keys are ``/``-separated, never start with ``/``."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path


class KeyNotFound(KeyError):
    """The key does not exist in the bucket."""


@dataclass
class TransferReport:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0

    def __str__(self) -> str:
        return f"{len(self.uploaded)} uploaded, {len(self.skipped)} unchanged, {self.bytes} bytes sent"


class Storage(abc.ABC):
    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """Where the key lives, as a person or SageMaker would name it."""

    @abc.abstractmethod
    def put_file(self, path: str | Path, key: str) -> bool:
        """Store a file; return False (and send nothing) when the same content is already there."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Fetch to ``path`` atomically. Raises KeyNotFound."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Raises KeyNotFound."""

    @abc.abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write only if the key does not exist yet (a lock); True when this call created it."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def checksum(self, key: str) -> str | None:
        """SHA-256 of the stored content, or None when the key is absent."""

    @abc.abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under the prefix, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def upload_dir(self, directory: str | Path, prefix: str) -> TransferReport:
        """Mirror every file under ``directory`` to ``prefix/<relative path>``, skipping unchanged ones."""
        directory = Path(directory)
        report = TransferReport()
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(directory).as_posix()}"
            if self.put_file(path, key):
                report.uploaded.append(key)
                report.bytes += path.stat().st_size
            else:
                report.skipped.append(key)
        return report

    def download_prefix(self, prefix: str, directory: str | Path) -> list[Path]:
        """Fetch every key under ``prefix`` into ``directory``, keeping the relative layout."""
        prefix = prefix.rstrip("/") + "/"
        paths = []
        for key in self.list_keys(prefix):
            target = Path(directory) / key[len(prefix) :]
            self.get_file(key, target)
            paths.append(target)
        return paths
