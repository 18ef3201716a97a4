"""The converted channels as one unit: build them from a Kaggle-layout root, upload, download.

A channel directory (what SageMaker mounts as ``SM_CHANNEL_TRAIN`` etc.)::

    <directory>/train/train.rec  train.idx  train.lst
    <directory>/validation/validation.rec  validation.idx  validation.lst
    <directory>/manifest.json

In the bucket the same layout sits under ``<prefix>/`` (``data/`` by default).
Only the files the manifest vouches for travel, and the manifest travels last,
so a reader that sees a manifest sees complete channels.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.data.convert import MANIFEST, ConvertOptions, ConvertReport, convert_lists
from distracted_driver.data.split import SplitReport, split_dataset
from distracted_driver.fsutil import write_json_atomic
from distracted_driver.hashing import sha256_file
from distracted_driver.storage import KeyNotFound, Storage, TransferReport


@dataclass(frozen=True)
class WorkDirs:
    """Where the data tasks read and write by default, so that they chain with no options."""

    sample: Path  # Kaggle-layout root made by `inv data.sample`
    lists: Path  # train.lst, validation.lst, split.json
    channels: Path  # the converted channel directory

    @classmethod
    def of(cls, settings: Settings) -> WorkDirs:
        work = Path(settings.work_dir)
        return cls(work / "sample", work / "data" / "split", work / "data" / "converted")


class ChannelsError(RuntimeError):
    """The channel directory (or its copy in the bucket) is incomplete or does not match its manifest."""


@dataclass
class BuildReport:
    split: SplitReport
    convert: ConvertReport

    @property
    def directory(self) -> Path:
        return self.convert.directory

    def summary(self) -> str:
        return f"{self.split.summary()}\n{self.convert.summary()}"


def build_channels(
    source_root: str | Path,
    directory: str | Path,
    *,
    val_drivers: int | None = None,
    val_fraction: float | None = None,
    fold: int | None = None,
    folds: int = 5,
    seed: int = 0,
    options: ConvertOptions = ConvertOptions(),
    workers: int | None = None,
    progress: bool = True,
    lists_dir: str | Path | None = None,
) -> BuildReport:
    """Split by driver and convert both channels: the whole data stage in one call."""
    with tempfile.TemporaryDirectory(prefix="dd-lists-") as scratch:
        lists = Path(lists_dir) if lists_dir else Path(scratch)
        split = split_dataset(
            source_root, lists, val_drivers=val_drivers, val_fraction=val_fraction, fold=fold, folds=folds, seed=seed
        )
        converted = convert_lists(lists, directory, options=options, workers=workers, progress=progress)
    return BuildReport(split, converted)


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ChannelsError(f"no {MANIFEST} in {directory}: the conversion did not finish (run `inv data.convert`)")
    return json.loads(path.read_text())


def channel_files(manifest: dict) -> list[str]:
    """Relative paths of every channel file the manifest lists."""
    return sorted(file for split in manifest["splits"].values() for file in split["files"])


def verify_channels(directory: str | Path) -> dict:
    """Check every file against the manifest's checksums; return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for relative in channel_files(manifest):
        path = directory / relative
        expected = _split_of(manifest, relative)["files"][relative]["sha256"]
        if not path.is_file():
            raise ChannelsError(f"{path} is listed in the manifest but missing")
        if sha256_file(path) != expected:
            raise ChannelsError(f"{path} does not match the checksum in the manifest")
    return manifest


def _split_of(manifest: dict, relative: str) -> dict:
    return manifest["splits"][relative.split("/", 1)[0]]


def upload_channels(storage: Storage, directory: str | Path, prefix: str = "data") -> TransferReport:
    """Copy the channels to ``<prefix>/train/…``, ``<prefix>/validation/…`` and ``<prefix>/manifest.json``.

    Files whose content is already in the bucket are skipped (checksum); the manifest goes last.
    """
    directory = Path(directory)
    verify_channels(directory)
    prefix = prefix.strip("/")
    report = TransferReport()
    for relative in [*channel_files(read_manifest(directory)), MANIFEST]:
        key = f"{prefix}/{relative}"
        if storage.put_file(directory / relative, key):
            report.uploaded.append(key)
            report.bytes += (directory / relative).stat().st_size
        else:
            report.skipped.append(key)
    return report


def download_channels(storage: Storage, prefix: str, directory: str | Path) -> dict:
    """Fetch the channels under ``prefix`` into ``directory``, verified against the manifest; return it."""
    prefix = prefix.strip("/")
    directory = Path(directory)
    try:
        manifest = json.loads(storage.get_bytes(f"{prefix}/{MANIFEST}"))
    except KeyNotFound:
        raise ChannelsError(f"no {MANIFEST} under {storage.uri(prefix)}: upload the channels first") from None
    for relative in channel_files(manifest):
        target = directory / relative
        expected = _split_of(manifest, relative)["files"][relative]["sha256"]
        if not (target.is_file() and sha256_file(target) == expected):
            storage.get_file(f"{prefix}/{relative}", target)
    write_json_atomic(directory / MANIFEST, manifest)
    verify_channels(directory)
    return manifest
