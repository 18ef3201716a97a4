"""The bucket on S3, behind the same interface as the local directory.

- Every object we write carries its SHA-256 in user metadata (``x-amz-meta-sha256``),
  so ``put_file`` skips unchanged files with one HEAD request and no transfer.
  Objects written by others (a SageMaker training job's ``model.tar.gz``) have
  no such metadata: their checksum comes from S3's own full-object SHA-256
  when present, else from streaming the object once.
- Large files go through boto3's managed transfer (multipart above the
  threshold, parts sent in parallel).
- Server-side encryption on every write: SSE-KMS with the pipeline's key
  when one is configured (``DD_KMS_KEY_ID``, a Terraform output), else SSE-S3.
- ``create_exclusive`` is a conditional write (``If-None-Match: *``), which
  S3 applies atomically: of two concurrent writers exactly one wins.
"""

from __future__ import annotations

import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from distracted_driver.awsclient import aws_client
from distracted_driver.fsutil import atomic_path
from distracted_driver.hashing import sha256_file
from distracted_driver.storage.base import KeyNotFound, Storage, TransferReport

SHA256_METADATA = "sha256"
MiB = 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# Another writer won the race (412), or S3 saw two conditional writes at once (409).
_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def default_transfer_config() -> TransferConfig:
    return TransferConfig(
        multipart_threshold=16 * MiB,
        multipart_chunksize=16 * MiB,
        max_concurrency=8,
        use_threads=True,
    )


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        region: str = "us-east-1",
        *,
        kms_key_id: str | None = None,
        transfer_config: TransferConfig | None = None,
        client=None,
        upload_workers: int = 8,
        list_page_size: int = 1000,
    ):
        if not bucket:
            raise ValueError("S3Storage needs a bucket name (DD_BUCKET)")
        self.bucket = bucket
        self.region = region
        self.kms_key_id = kms_key_id or None
        self.transfer_config = transfer_config or default_transfer_config()
        self.upload_workers = upload_workers
        self.list_page_size = list_page_size
        self.client = client or aws_client("s3", region, max_pool_connections=32)

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _check_key(key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid key {key!r}")
        return key

    def _write_args(self, sha256: str) -> dict:
        args = {"Metadata": {SHA256_METADATA: sha256}}
        if self.kms_key_id:
            args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=self.kms_key_id)
        else:
            args["ServerSideEncryption"] = "AES256"
        return args

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._check_key(key), ChecksumMode="ENABLED")
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND:
                return None
            raise

    def _stream_sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(MiB):
            digest.update(chunk)
        return digest.hexdigest()

    # -- Storage -----------------------------------------------------------

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._check_key(key)}"

    def put_file(self, path: str | Path, key: str) -> bool:
        digest = sha256_file(path)
        if self.checksum(key) == digest:
            return False
        self.client.upload_file(
            str(path),
            self.bucket,
            self._check_key(key),
            ExtraArgs=self._write_args(digest),
            Config=self.transfer_config,
        )
        return True

    def get_file(self, key: str, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            try:
                self.client.download_file(self.bucket, self._check_key(key), str(tmp), Config=self.transfer_config)
            except ClientError as error:
                if _error_code(error) in _NOT_FOUND:
                    raise KeyNotFound(key) from None
                raise

    def put_bytes(self, key: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        self.client.put_object(Bucket=self.bucket, Key=self._check_key(key), Body=data, **self._write_args(digest))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._check_key(key))["Body"].read()
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND:
                raise KeyNotFound(key) from None
            raise

    def create_exclusive(self, key: str, data: bytes) -> bool:
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._check_key(key), Body=data, IfNoneMatch="*", **self._write_args(digest)
            )
        except ClientError as error:
            if _error_code(error) in _LOST_RACE:
                return False
            raise
        return True

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def checksum(self, key: str) -> str | None:
        head = self._head(key)
        if head is None:
            return None
        ours = head.get("Metadata", {}).get(SHA256_METADATA)
        if ours:
            return ours
        # S3's own SHA-256 is of the whole object only for single-part uploads
        # (a multipart one reads "<checksum of part checksums>-<parts>").
        theirs = head.get("ChecksumSHA256")
        if theirs and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT" and "-" not in theirs:
            return base64.b64decode(theirs).hex()
        return self._stream_sha256(key)

    def list_keys(self, prefix: str = "") -> list[str]:
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
        )
        for page in pages:
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._check_key(key))

    def upload_dir(self, directory: str | Path, prefix: str) -> TransferReport:
        """As the base class, but several files at once: S3 latency, not bandwidth, bounds many small files."""
        directory = Path(directory)
        paths = sorted(p for p in directory.rglob("*") if p.is_file())
        keys = [f"{prefix.rstrip('/')}/{p.relative_to(directory).as_posix()}" for p in paths]
        with ThreadPoolExecutor(max_workers=self.upload_workers) as pool:
            sent = list(pool.map(self.put_file, paths, keys))
        report = TransferReport()
        for path, key, was_sent in zip(paths, keys, sent):
            if was_sent:
                report.uploaded.append(key)
                report.bytes += path.stat().st_size
            else:
                report.skipped.append(key)
        return report
