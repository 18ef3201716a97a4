"""Model artifacts fetched from the bucket into a local cache under ``settings.work_dir``.

``fetch_artifact(settings, "latest" | "live" | job)`` names the version through
the registry, downloads ``models/<job>/output/model.tar.gz`` once, and returns
the validated, unpacked ``ModelArtifact`` at ``work_dir/models/<job>/model``.
A later call reuses that copy while the tar in the bucket keeps its checksum.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.hashing import sha256_file
from distracted_driver.model.artifact import ArtifactError, ModelArtifact, load_artifact
from distracted_driver.model.registry import Registry
from distracted_driver.storage import Storage, open_storage


def fetch_artifact(settings: Settings, model: str = "latest", storage: Storage | None = None) -> ModelArtifact:
    """The artifact of a job (or ``latest`` / ``live``), unpacked under ``work_dir/models/<job>/model``."""
    storage = storage or open_storage(settings)
    registry = Registry(storage, settings)
    job = registry.resolve(model)
    key = registry.artifact_key(job)
    remote_sum = storage.checksum(key)
    if remote_sum is None:
        raise ArtifactError(f"no artifact for model {job!r}: {storage.uri(key)} does not exist")
    cache = Path(settings.work_dir) / "models" / job
    tar_path, model_dir = cache / "model.tar.gz", cache / "model"
    if model_dir.is_dir() and tar_path.is_file() and sha256_file(tar_path) == remote_sum:
        return load_artifact(model_dir)
    cache.mkdir(parents=True, exist_ok=True)
    # Fetch and unpack beside the final place, then swap in, so no reader sees half a model.
    staging = Path(tempfile.mkdtemp(prefix=".fetch.", dir=cache))
    try:
        registry.fetch_artifact(job, staging)
        shutil.rmtree(model_dir, ignore_errors=True)
        try:
            (staging / "model").rename(model_dir)
        except OSError:  # another process unpacked the same tar first; its copy is as good
            pass
        os.replace(staging / "model.tar.gz", tar_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_artifact(model_dir)
