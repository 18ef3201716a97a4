"""The channel reader keeps labels and places, not images: its memory does not grow with the channel's bytes."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hostile_images import camera_like_jpeg

from distracted_driver.data import recordio
from distracted_driver.data.channel import decoded_batches, read_records
from distracted_driver.data.imaging import Preprocessing

RECORDS = 120
PAYLOAD_BYTES = 200_000  # 24 MB of payloads in all


def _big_channel(directory):
    directory.mkdir()
    rng = np.random.default_rng(0)
    payloads = []
    with recordio.IndexedRecordWriter(directory / "train.idx", directory / "train.rec") as writer:
        for key in range(RECORDS):
            payload = rng.bytes(PAYLOAD_BYTES)
            writer.write_idx(key, recordio.pack(recordio.ImageHeader(0, float(key % 10), key, 0), payload))
            payloads.append(payload)
    return payloads


def test_reading_a_channel_does_not_hold_its_images(tmp_path):
    payloads = _big_channel(tmp_path / "train")
    tracemalloc.start()
    try:
        records, skipped = read_records(tmp_path / "train")
        _, peak = tracemalloc.get_traced_memory()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not skipped and [r.label for r in records] == [k % 10 for k in range(RECORDS)]
    # One record read at a time while checking; what stays is a label and a key per record.
    assert peak < 4 * PAYLOAD_BYTES, f"peak {peak} bytes while reading {RECORDS * PAYLOAD_BYTES} bytes of records"
    assert held < 100_000, f"{held} bytes held by {RECORDS} records"
    assert records[7].payload == payloads[7] and records[-1].payload == payloads[-1]


def test_records_are_read_again_when_decoded(tmp_path):
    channel = tmp_path / "validation"
    channel.mkdir()
    images = [camera_like_jpeg(96, 72, seed=i) for i in range(5)]
    with recordio.IndexedRecordWriter(channel / "v.idx", channel / "v.rec") as writer:
        for key, data in enumerate(images):
            writer.write_idx(key, recordio.pack(recordio.ImageHeader(0, 3.0, key, 0), data))
    records, _ = read_records(channel)
    batches = list(decoded_batches(records, Preprocessing(input_size=32), batch_size=2, workers=2))
    assert [len(b.labels) for b in batches] == [2, 2, 1] and not any(b.failed for b in batches)
    assert [s for b in batches for s in b.sources] == [f"v:{k}" for k in range(5)]
