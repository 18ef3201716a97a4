"""Parity with MXNet itself, both directions, run live against mxnet 1.9.1 in its own environment.

- MXNet's ``MXIndexedRecordIO`` + ``unpack_img`` read our channels: same keys, headers, sizes, pixels.
- MXNet's ``tools/im2rec.py`` converts the same ``.lst``: our reader reads its files exactly as MXNet
  does, and its records agree with ours (ids, labels, sizes, pixels).
- Records whose payloads hold the RecordIO magic, written by each side, read by the other, byte for byte.

mxnet 1.9.1 needs numpy<1.24, hence ``.venvs/mxnet`` (``make mxnet-env``; ``make test`` builds it).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from distracted_driver.data import channels, layout, recordio
from distracted_driver.data.sample import generate_sample
from distracted_driver.data.split import read_lst

ROOT = Path(__file__).resolve().parents[1]
MXNET_PYTHON = Path(os.environ.get("DD_MXNET_PYTHON", ROOT / ".venvs" / "mxnet" / "bin" / "python"))
MAGIC = struct.pack("<I", recordio.MAGIC)

pytestmark = pytest.mark.slow  # every test here runs MXNet in a process of its own environment


def magic_payloads() -> list[bytes]:
    """The same payloads tests/mxnet_side/parity.py writes with MXNet, built here with our pack."""
    header = recordio.ImageHeader(0, np.array([1.5, -2.0, 3.25], np.float32), 42, 7)
    return [
        MAGIC + b"abcd" + MAGIC + b"xy" + MAGIC + b"z",
        b"",
        b"ab" + MAGIC + b"cd",
        MAGIC,
        b"12345678" + MAGIC + MAGIC,
        recordio.pack(header, MAGIC + b"payload"),
    ]


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    if not MXNET_PYTHON.exists():
        pytest.fail(f"the MXNet environment is missing ({MXNET_PYTHON}): run `make mxnet-env` (make test builds it)")
    work = tmp_path_factory.mktemp("mxnet")
    source = work / "kaggle"
    generate_sample(source, drivers=5, images_per_class_driver=1, test_images=0, seed=11, progress=False)
    built = channels.build_channels(source, work / "ours", val_drivers=1, workers=2, progress=False)
    with recordio.IndexedRecordWriter(work / "magic_ours.idx", work / "magic_ours.rec") as writer:
        for key, payload in enumerate(magic_payloads()):
            writer.write_idx(key * 10, payload)
    mx_work = work / "mx"
    mx_work.mkdir()
    command = [
        str(MXNET_PYTHON),
        str(ROOT / "tests" / "mxnet_side" / "parity.py"),
        "--ours",
        str(built.directory),
        "--lst",
        str(built.directory / "train" / "train.lst"),
        "--images",
        str(source / layout.TRAIN_DIR),
        "--magic-ours",
        str(work / "magic_ours"),
        "--work",
        str(mx_work),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"MXNet side failed:\n{result.stdout}\n{result.stderr}"
    report = json.loads((mx_work / "report.json").read_text())
    return {"work": work, "mx": mx_work, "built": built, "report": report}


def our_records(idx: Path, rec: Path) -> dict[int, bytes]:
    with recordio.IndexedRecordReader(idx, rec) as reader:
        return dict(iter(reader))


def decode(payload: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)


def test_mxnet_reads_our_channels(parity):
    assert parity["report"]["mxnet"] == "1.9.1"
    directory = parity["built"].directory
    for split in ("train", "validation"):
        seen = parity["report"]["ours"][split]
        ours = our_records(directory / split / f"{split}.idx", directory / split / f"{split}.rec")
        listed = read_lst(directory / split / f"{split}.lst")
        assert [r["key"] for r in seen["records"]] == list(ours) == [e.index for e in listed]
        assert seen["sequential_count"] == len(ours)
        pixels = np.load(parity["mx"] / f"ours_{split}.npz")
        for record, entry in zip(seen["records"], listed):
            header, payload = recordio.unpack(ours[entry.index])
            assert (record["flag"], record["label"], record["id"], record["id2"]) == (0, entry.label, entry.index, 0)
            assert (header.label, header.id) == (entry.label, entry.index)
            assert record["shape"] == [256, 341, 3]
            # Same bytes decoded by MXNet's OpenCV 4.8 and ours: the same pixels.
            np.testing.assert_array_equal(pixels[str(entry.index)], decode(payload))


def test_our_reader_reads_im2rec_files_as_mxnet_does(parity):
    im2rec = parity["report"]["im2rec"]
    records = our_records(Path(im2rec["idx"]), Path(im2rec["rec"]))
    assert list(records) == [r["key"] for r in im2rec["records"]]
    pixels = np.load(parity["mx"] / "im2rec.npz")
    for seen in im2rec["records"]:
        raw = records[seen["key"]]
        assert hashlib.sha256(raw).hexdigest() == seen["sha256"]
        header, payload = recordio.unpack(raw)
        assert tuple(header) == (seen["flag"], seen["label"], seen["id"], seen["id2"])
        np.testing.assert_array_equal(decode(payload), pixels[str(seen["key"])])


def test_im2rec_and_our_converter_write_the_same_images(parity):
    """Same .lst, same flags (--resize 256 --quality 95): same keys, labels, sizes, and near-identical pixels."""
    directory = parity["built"].directory
    ours = our_records(directory / "train" / "train.idx", directory / "train" / "train.rec")
    im2rec = parity["report"]["im2rec"]
    theirs = our_records(Path(im2rec["idx"]), Path(im2rec["rec"]))
    assert list(ours) == list(theirs)
    worst = np.inf
    for key in ours:
        our_header, our_payload = recordio.unpack(ours[key])
        their_header, their_payload = recordio.unpack(theirs[key])
        assert our_header == their_header
        a, b = decode(our_payload).astype(np.float64), decode(their_payload).astype(np.float64)
        assert a.shape == b.shape
        mse = np.mean((a - b) ** 2)
        worst = min(worst, np.inf if mse == 0 else 10 * np.log10(255**2 / mse))
    assert worst > 45, f"PSNR between our records and im2rec's only {worst:.1f} dB"


def test_magic_payloads_both_ways(parity):
    work, mx_work = parity["work"], parity["mx"]
    # MXNet wrote them: byte-identical to what we write, and our reader gets the payloads back.
    assert (mx_work / "magic_mx.rec").read_bytes() == (work / "magic_ours.rec").read_bytes()
    assert (mx_work / "magic_mx.idx").read_text() == (work / "magic_ours.idx").read_text()
    expected = [bytes.fromhex(p) for p in parity["report"]["magic_mx"]["payloads"]]
    assert expected == magic_payloads()
    assert list(our_records(mx_work / "magic_mx.idx", mx_work / "magic_mx.rec").values()) == expected
    # We wrote them: MXNet's reader gets the payloads back, array labels included.
    assert [bytes.fromhex(h) for h in parity["report"]["magic_ours"].values()] == expected
    assert parity["report"]["magic_ours_last_header"] == {"flag": 3, "label": [1.5, -2.0, 3.25], "id": 42, "id2": 7}
