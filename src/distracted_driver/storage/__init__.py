"""The bucket: one small interface, a local directory and S3 behind it."""

from __future__ import annotations

from distracted_driver.config import Settings
from distracted_driver.storage.base import KeyNotFound, Storage, TransferReport


def open_storage(settings: Settings) -> Storage:
    """The bucket for the settings' backend."""
    if settings.backend == "local":
        from distracted_driver.storage.local import LocalStorage  # only the chosen backend loads

        return LocalStorage(settings.bucket_dir)
    from distracted_driver.storage.s3 import S3Storage  # only the chosen backend loads (boto3)

    return S3Storage(settings.bucket, region=settings.region, kms_key_id=settings.kms_key_id)


__all__ = ["KeyNotFound", "Storage", "TransferReport", "open_storage"]
