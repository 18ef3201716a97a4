"""RecordIO: the byte format of dmlc-core/MXNet, round trips, indexed access, image headers."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distracted_driver.data import recordio
from distracted_driver.data.recordio import (
    MAGIC,
    Continuation,
    ImageHeader,
    IndexedRecordReader,
    IndexedRecordWriter,
    RecordIOError,
    RecordReader,
    RecordWriter,
)

MAGIC_BYTES = struct.pack("<I", MAGIC)

# Payloads built from pieces, so the magic shows up at aligned and unaligned offsets, twice in a row, at
# the very start and end, and as the whole payload.
payloads = st.one_of(
    st.binary(max_size=64),
    st.lists(st.one_of(st.binary(max_size=9), st.just(MAGIC_BYTES)), max_size=8).map(b"".join),
)


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Parse raw frames: (flag, length, data) — independent of the module's reader."""
    out, offset = [], 0
    while offset < len(data):
        magic, lrec = struct.unpack_from("<II", data, offset)
        assert magic == MAGIC
        length = lrec & ((1 << 29) - 1)
        out.append((lrec >> 29, length, data[offset + 8 : offset + 8 + length]))
        offset += 8 + (length + 3) // 4 * 4
    assert offset == len(data)
    return out


def test_frame_layout_matches_dmlc_bytes():
    # These bytes are what mxnet 1.9.1 (dmlc-core) writes for the same payloads (tests/test_mxnet_parity.py
    # checks it live): a payload with the magic at offsets 0 and 8 (aligned) and 14 (unaligned), then b"".
    payload = MAGIC_BYTES + b"abcd" + MAGIC_BYTES + b"xy" + MAGIC_BYTES + b"z"
    expected = bytes.fromhex(
        "0a23d7ce00000020"  # START, 0 bytes (the payload begins with the magic)
        "0a23d7ce04000040"
        "61626364"  # MIDDLE, "abcd"
        "0a23d7ce07000060"
        "78790a23d7ce7a00"  # END, "xy" + unaligned magic + "z", one pad byte
    )
    assert recordio.encode_record(payload) == expected
    assert recordio.encode_record(b"") == bytes.fromhex("0a23d7ce00000000")
    assert recordio.encode_record(b"abcde") == bytes.fromhex("0a23d7ce050000006162636465000000")


@given(payload=payloads)
def test_no_aligned_magic_inside_frames_and_flags_in_sequence(payload):
    encoded = recordio.encode_record(payload)
    assert len(encoded) % 4 == 0
    parsed = frames(encoded)
    flags = [flag for flag, _, _ in parsed]
    if len(parsed) == 1:
        assert flags == [Continuation.WHOLE]
    else:
        assert flags == [Continuation.START] + [Continuation.MIDDLE] * (len(parsed) - 2) + [Continuation.END]
    for _, _, data in parsed:
        assert all(data[i : i + 4] != MAGIC_BYTES for i in range(0, len(data) - 3, 4))
    assert MAGIC_BYTES.join(data for _, _, data in parsed) == payload


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(records=st.lists(payloads, max_size=12))
def test_sequential_round_trip(tmp_path, records):
    path = tmp_path / "seq.rec"
    with RecordWriter(path) as writer:
        offsets = [writer.write(r) for r in records]
    with RecordReader(path) as reader:
        assert list(reader) == records
        assert reader.read() is None
    with RecordReader(path) as reader:
        for offset, record in zip(offsets, records):
            reader.seek(offset)
            assert reader.read() == record


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(records=st.lists(payloads, min_size=1, max_size=12), data=st.data())
def test_indexed_random_access(tmp_path, records, data):
    keys = data.draw(st.lists(st.integers(0, 2**40), min_size=len(records), max_size=len(records), unique=True))
    idx, rec = tmp_path / "x.idx", tmp_path / "x.rec"
    with IndexedRecordWriter(idx, rec) as writer:
        for key, record in zip(keys, records):
            writer.write_idx(key, record)
    expected = dict(zip(keys, records))
    order = data.draw(st.permutations(keys))
    with IndexedRecordReader(idx, rec) as reader:
        assert reader.keys == keys and len(reader) == len(keys)
        for key in order:
            assert reader.read_idx(key) == expected[key]
        assert dict(iter(reader)) == expected


def test_idx_lines_are_key_tab_offset(tmp_path):
    idx, rec = tmp_path / "a.idx", tmp_path / "a.rec"
    with IndexedRecordWriter(idx, rec) as writer:
        writer.write_idx(7, b"12345")  # 8 header + 5 data + 3 padding = 16
        writer.write_idx(3, MAGIC_BYTES)  # START(0) + END(0) frames = 16
        writer.write_idx(9, b"")
    assert idx.read_text() == "7\t0\n3\t16\n9\t32\n"
    assert rec.stat().st_size == 40


@given(
    label=st.floats(width=32, allow_nan=False),
    ident=st.integers(0, 2**64 - 1),
    ident2=st.integers(0, 2**64 - 1),
    payload=payloads,
)
def test_image_header_scalar_label(label, ident, ident2, payload):
    packed = recordio.pack(ImageHeader(5, label, ident, ident2), payload)
    assert len(packed) == 24 + len(payload)
    header, body = recordio.unpack(packed)
    assert header == ImageHeader(0, label, ident, ident2)  # a scalar label forces flag 0, as MXNet does
    assert body == payload


@given(
    labels=st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=10),
    ident=st.integers(0, 2**64 - 1),
    payload=payloads,
)
def test_image_header_array_labels(labels, ident, payload):
    packed = recordio.pack(ImageHeader(0, np.array(labels, np.float32), ident, 0), payload)
    assert struct.unpack_from("<IfQQ", packed) == (len(labels), 0.0, ident, 0)
    header, body = recordio.unpack(packed)
    assert header.flag == len(labels)
    assert header.label.dtype == np.float32
    np.testing.assert_array_equal(header.label, np.array(labels, np.float32))
    assert body == payload


def test_reader_refuses_bad_magic_and_truncation(tmp_path):
    good = recordio.encode_record(b"hello world")
    bad = tmp_path / "bad.rec"
    bad.write_bytes(b"\0\0\0\0" + good[4:])
    with RecordReader(bad) as reader, pytest.raises(RecordIOError, match="bad magic"):
        reader.read()
    short = tmp_path / "short.rec"
    short.write_bytes(good[:-4])
    with RecordReader(short) as reader, pytest.raises(RecordIOError, match="truncated"):
        reader.read()
    cut = tmp_path / "cut.rec"  # a START frame with no END after it
    cut.write_bytes(recordio.encode_record(MAGIC_BYTES + b"tail")[:8])
    with RecordReader(cut) as reader, pytest.raises(RecordIOError, match="truncated"):
        reader.read()


def test_reader_refuses_out_of_sequence_flags(tmp_path):
    path = tmp_path / "seq.rec"
    path.write_bytes(struct.pack("<II", MAGIC, (3 << 29) | 0))  # END without START
    with RecordReader(path) as reader, pytest.raises(RecordIOError, match="out of sequence"):
        reader.read()


def test_indexed_reader_errors(tmp_path):
    idx, rec = tmp_path / "e.idx", tmp_path / "e.rec"
    with IndexedRecordWriter(idx, rec) as writer:
        writer.write_idx(1, b"one")
    with IndexedRecordReader(idx, rec) as reader, pytest.raises(RecordIOError, match="key 2"):
        reader.read_idx(2)
    idx.write_text("1\t0\n2\t4096\n")
    with IndexedRecordReader(idx, rec) as reader, pytest.raises(RecordIOError, match="past the end"):
        reader.read_idx(2)
    idx.write_text("1 0\n")
    with pytest.raises(RecordIOError, match="key<TAB>offset"):
        IndexedRecordReader(idx, rec)


def test_unpack_refuses_short_records():
    with pytest.raises(RecordIOError):
        recordio.unpack(b"\0" * 10)
    with pytest.raises(RecordIOError, match="declares 4 labels"):
        recordio.unpack(struct.pack("<IfQQ", 4, 0.0, 1, 0) + b"\0" * 8)


def test_indexed_reader_pickles_for_worker_processes(tmp_path):
    idx, rec = tmp_path / "p.idx", tmp_path / "p.rec"
    with IndexedRecordWriter(idx, rec) as writer:
        for key in range(5):
            writer.write_idx(key, bytes([key]) * key)
    with IndexedRecordReader(idx, rec) as reader:
        clone = pickle.loads(pickle.dumps(reader))
    with clone:
        assert [clone.read_idx(k) for k in range(5)] == [bytes([k]) * k for k in range(5)]
