"""S3Storage against moto's S3: the same contract as the local bucket, plus what only S3 has.

The first group runs every test on both backends (the local directory and S3), so the
two behave the same where the interface promises the same.
"""

from __future__ import annotations

import base64
import hashlib
import os

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from distracted_driver.config import Settings
from distracted_driver.hashing import sha256_file
from distracted_driver.storage import KeyNotFound, open_storage
from distracted_driver.storage.local import LocalStorage
from distracted_driver.storage.s3 import SHA256_METADATA, S3Storage

pytestmark = pytest.mark.moto  # a moto server per test

BUCKET = "dd-test-bucket"
MiB = 1024 * 1024


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "bucket")
    request.getfixturevalue("s3")
    return S3Storage(BUCKET, region="us-east-1")


# --- the contract both backends keep ----------------------------------------------------


def test_bytes_round_trip_and_checksum(storage):
    storage.put_bytes("registry/live.json", b'{"job": "dd-1"}')
    assert storage.get_bytes("registry/live.json") == b'{"job": "dd-1"}'
    assert storage.checksum("registry/live.json") == hashlib.sha256(b'{"job": "dd-1"}').hexdigest()
    assert storage.exists("registry/live.json") and not storage.exists("registry/other.json")
    assert storage.checksum("registry/other.json") is None


def test_missing_keys_raise_key_not_found_and_leave_no_file(storage, tmp_path):
    with pytest.raises(KeyNotFound):
        storage.get_bytes("nope/missing.json")
    target = tmp_path / "out" / "missing.bin"
    with pytest.raises(KeyNotFound):
        storage.get_file("nope/missing.bin", target)
    assert not target.exists()
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_put_file_skips_unchanged_content(storage, tmp_path):
    path = tmp_path / "train.rec"
    path.write_bytes(os.urandom(4096))
    assert storage.put_file(path, "data/train/train.rec") is True
    assert storage.put_file(path, "data/train/train.rec") is False
    path.write_bytes(os.urandom(4096))
    assert storage.put_file(path, "data/train/train.rec") is True
    assert storage.checksum("data/train/train.rec") == sha256_file(path)


def test_create_exclusive_is_a_lock(storage):
    assert storage.create_exclusive("pipeline/lock.json", b"first") is True
    assert storage.create_exclusive("pipeline/lock.json", b"second") is False
    assert storage.get_bytes("pipeline/lock.json") == b"first"
    storage.delete("pipeline/lock.json")
    assert storage.create_exclusive("pipeline/lock.json", b"third") is True


def test_list_upload_and_download_keep_the_layout(storage, tmp_path):
    source = tmp_path / "channels"
    for relative, size in (
        ("train/train.rec", 3000),
        ("train/train.idx", 40),
        ("validation/validation.rec", 2000),
        ("manifest.json", 10),
    ):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(os.urandom(size))
    first = storage.upload_dir(source, "data")
    assert sorted(first.uploaded) == [
        "data/manifest.json",
        "data/train/train.idx",
        "data/train/train.rec",
        "data/validation/validation.rec",
    ]
    assert first.bytes == 5050 and first.skipped == []
    (source / "manifest.json").write_bytes(b"changed")
    second = storage.upload_dir(source, "data")
    assert second.uploaded == ["data/manifest.json"] and len(second.skipped) == 3

    assert storage.list_keys("data/train/") == ["data/train/train.idx", "data/train/train.rec"]
    fetched = storage.download_prefix("data", tmp_path / "copy")
    assert len(fetched) == 4
    for path in fetched:
        relative = path.relative_to(tmp_path / "copy")
        assert path.read_bytes() == (source / relative).read_bytes()


def test_invalid_keys_are_refused(storage):
    for key in ("", "/abs", "a/../b"):
        with pytest.raises(ValueError):
            storage.put_bytes(key, b"x")


# --- S3 only ---------------------------------------------------------------------------


def test_open_storage_picks_s3_with_the_settings(aws):
    settings = Settings(backend="aws", bucket=BUCKET, region="eu-west-1", kms_key_id="arn:aws:kms:eu-west-1:1:key/k")
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.region, storage.kms_key_id) == (BUCKET, "eu-west-1", settings.kms_key_id)
    assert storage.uri("models/dd-1/output/model.tar.gz") == f"s3://{BUCKET}/models/dd-1/output/model.tar.gz"


def test_large_files_go_multipart_with_their_checksum(s3, tmp_path):
    storage = S3Storage(
        BUCKET, transfer_config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    )
    path = tmp_path / "big.rec"
    path.write_bytes(os.urandom(11 * MiB))
    assert storage.put_file(path, "data/train/train.rec")
    head = s3.head_object(Bucket=BUCKET, Key="data/train/train.rec")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["Metadata"][SHA256_METADATA] == sha256_file(path)
    assert storage.checksum("data/train/train.rec") == sha256_file(path)
    # Unchanged: no second upload, so no second object version.
    assert storage.put_file(path, "data/train/train.rec") is False
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="data/train/train.rec")["Versions"]
    assert len(versions) == 1


def test_every_write_is_encrypted_with_sse_s3_or_the_kms_key(s3, tmp_path):
    plain = S3Storage(BUCKET)
    plain.put_bytes("a.json", b"{}")
    assert s3.head_object(Bucket=BUCKET, Key="a.json")["ServerSideEncryption"] == "AES256"

    key_id = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
    kms = S3Storage(BUCKET, kms_key_id=key_id)
    path = tmp_path / "f.bin"
    path.write_bytes(b"payload")
    kms.put_file(path, "b.bin")
    kms.create_exclusive("c.lock", b"lock")
    for key in ("b.bin", "c.lock"):
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_id


def test_checksum_of_objects_written_by_others(s3):
    """A training job's model.tar.gz has no sha256 metadata: S3's own checksum, else the content, gives it."""
    storage = S3Storage(BUCKET)
    body = os.urandom(2048)
    digest = hashlib.sha256(body).digest()
    s3.put_object(
        Bucket=BUCKET, Key="models/j/output/model.tar.gz", Body=body, ChecksumSHA256=base64.b64encode(digest).decode()
    )
    assert storage.checksum("models/j/output/model.tar.gz") == digest.hex()
    s3.put_object(Bucket=BUCKET, Key="models/j/output/output.tar.gz", Body=body, ChecksumAlgorithm="CRC32")
    assert storage.checksum("models/j/output/output.tar.gz") == digest.hex()


def test_list_keys_follows_pages(s3):
    storage = S3Storage(BUCKET, list_page_size=2)
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"raw/imgs/{4 - i:05d}.jpg", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="rawer.json", Body=b"x")
    calls = []
    storage.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    assert storage.list_keys("raw/") == [f"raw/imgs/{i:05d}.jpg" for i in range(5)]
    assert len(calls) == 3  # pages of 2, 2 and 1


def test_s3storage_needs_a_bucket():
    with pytest.raises(ValueError, match="DD_BUCKET"):
        S3Storage("")
