"""The ``source_dir`` of a SageMaker script-mode job: ``sourcedir.tar.gz`` with

- ``train.py`` (``scripts/train.py``, the job's entry point, ``sagemaker_program``);
- ``distracted_driver/`` (the package, beside the entry point, so it imports as is);
- ``requirements.txt``: the package's runtime and ``train`` requirements without torch,
  which the PyTorch container has and must keep; the container installs the rest
  before it runs the entry point.

The archive is byte-for-byte reproducible (sorted members, fixed times and owners), so
staging unchanged code again uploads nothing (``Storage.put_file`` skips equal content).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import tarfile
from pathlib import Path

from packaging.requirements import Requirement

from distracted_driver.fsutil import atomic_path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ENTRY_POINT = PACKAGE_DIR.parents[1] / "scripts" / "train.py"
DISTRIBUTION = "distracted-driver"
CONTAINER_PROVIDES = ("torch",)  # never reinstalled over the container's own build


def container_requirements() -> list[str]:
    """The package's requirements for training, as ``requirements.txt`` lines."""
    lines = []
    for text in importlib.metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and not marker.evaluate({"extra": "train"}):
            continue
        if requirement.name.lower() in CONTAINER_PROVIDES:
            continue
        requirement.marker = None
        lines.append(str(requirement))
    return sorted(lines)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(data))


def stage_source_dir(tar_path: str | Path, entry_point: str | Path = ENTRY_POINT) -> Path:
    """Write ``sourcedir.tar.gz`` (atomically) and return its path."""
    files = {
        "train.py": Path(entry_point).read_bytes(),
        "requirements.txt": ("\n".join(container_requirements()) + "\n").encode(),
    }
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" not in path.parts:
            files[f"distracted_driver/{path.relative_to(PACKAGE_DIR).as_posix()}"] = path.read_bytes()
    with atomic_path(tar_path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped:
            with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive:
                for name in sorted(files):
                    _add(archive, name, files[name])
    return Path(tar_path)
