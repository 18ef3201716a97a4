"""MXNet's RecordIO format, read and written without MXNet.

The bytes on disk follow dmlc-core's ``recordio`` exactly, so that MXNet,
SageMaker's built-in image-classification algorithm and our training script
read the same files:

- a record is framed as ``magic (u32) | lrec (u32) | data | zero padding to 4 bytes``,
  little endian; ``lrec`` holds the data length in its lower 29 bits and a
  continuation flag in its upper 3 bits;
- the magic must never appear inside a frame's data at a 4-byte aligned
  position (a reader resynchronises on it), so the writer cuts the payload at
  each aligned occurrence, drops those 4 bytes, and emits the pieces as
  frames flagged START, MIDDLE..., END; the reader joins the pieces back
  with the magic between them. Unaligned occurrences stay in the data;
- ``.idx`` files hold ``key<TAB>offset`` lines, offset of the record's first frame;
- an image record's payload starts with the ``IfQQ`` header (flag, label, id,
  id2); ``flag = N > 0`` means N float32 labels follow the header and the
  header's own label field is 0.
"""

from __future__ import annotations

import enum
import numbers
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrec
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
MAX_RECORD_BYTES = _LENGTH_MASK  # a frame's length must fit in 29 bits
_IMAGE_HEADER = struct.Struct("<IfQQ")


class Continuation(enum.IntEnum):
    """The 3-bit flag of a frame: where it sits in its record."""

    WHOLE = 0
    START = 1
    MIDDLE = 2
    END = 3


class RecordIOError(ValueError):
    """The file is not valid RecordIO (bad magic, truncated frame, unknown key)."""


# --- framing ------------------------------------------------------------------


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


def _magic_positions(payload: bytes) -> list[int]:
    """Offsets of the magic at 4-byte aligned positions of ``payload``."""
    positions = []
    start = payload.find(_MAGIC_BYTES)
    while start != -1:
        if start % 4 == 0:
            positions.append(start)
            start = payload.find(_MAGIC_BYTES, start + 4)
        else:
            start = payload.find(_MAGIC_BYTES, start + 1)
    return positions


def encode_record(payload: bytes) -> bytes:
    """The bytes one record occupies in a ``.rec`` file (frames plus padding)."""
    payload = bytes(payload)
    if len(payload) > MAX_RECORD_BYTES:
        raise RecordIOError(f"record of {len(payload)} bytes exceeds RecordIO's limit of {MAX_RECORD_BYTES}")
    cuts = _magic_positions(payload)
    if not cuts:
        return _frame(Continuation.WHOLE, payload) + b"\0" * _pad(len(payload))
    parts = []
    begin = 0
    for i, cut in enumerate(cuts):
        # Pieces before an aligned cut are multiples of 4 long: no padding between frames.
        parts.append(_frame(Continuation.START if i == 0 else Continuation.MIDDLE, payload[begin:cut]))
        begin = cut + 4
    tail = payload[begin:]
    parts.append(_frame(Continuation.END, tail) + b"\0" * _pad(len(tail)))
    return b"".join(parts)


def _frame(flag: Continuation, data: bytes) -> bytes:
    return _FRAME.pack(MAGIC, (int(flag) << _LENGTH_BITS) | len(data)) + data


def _decode_frame_header(header: bytes, offset: int) -> tuple[Continuation, int]:
    if len(header) != _FRAME.size:
        raise RecordIOError(f"truncated frame header at offset {offset}")
    magic, lrec = _FRAME.unpack(header)
    if magic != MAGIC:
        raise RecordIOError(f"bad magic 0x{magic:08x} at offset {offset} (expected 0x{MAGIC:08x})")
    flag = lrec >> _LENGTH_BITS
    if flag > Continuation.END:
        raise RecordIOError(f"unknown continuation flag {flag} at offset {offset}")
    return Continuation(flag), lrec & _LENGTH_MASK


def _read_record(read, offset: int) -> tuple[bytes | None, int]:
    """Read one record with ``read(n, offset) -> bytes``; return (payload, next offset).

    Returns (None, offset) at a clean end of file.
    """
    pieces: list[bytes] = []
    expect_continuation = False
    while True:
        header = read(_FRAME.size, offset)
        if not header and not pieces:
            return None, offset
        flag, length = _decode_frame_header(header, offset)
        if expect_continuation != (flag in (Continuation.MIDDLE, Continuation.END)):
            raise RecordIOError(f"continuation flag {flag.name} out of sequence at offset {offset}")
        stored = length + _pad(length)
        data = read(stored, offset + _FRAME.size)
        if len(data) != stored:
            raise RecordIOError(f"truncated record at offset {offset}: {len(data)} of {stored} bytes")
        pieces.append(data[:length])
        offset += _FRAME.size + stored
        if flag in (Continuation.WHOLE, Continuation.END):
            return _MAGIC_BYTES.join(pieces), offset
        expect_continuation = True


# --- image records ---------------------------------------------------------------


class ImageHeader(NamedTuple):
    """MXNet's ``IRHeader``: flag, label (a float, or an array when flag = its length), id, id2."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(header: ImageHeader | tuple, payload: bytes) -> bytes:
    """Header + payload as MXNet's ``recordio.pack`` makes them (scalar label → flag 0)."""
    header = ImageHeader(*header)
    if isinstance(header.label, numbers.Number):
        head = _IMAGE_HEADER.pack(0, float(header.label), header.id, header.id2)
        return head + bytes(payload)
    labels = np.asarray(header.label, dtype="<f4").ravel()
    head = _IMAGE_HEADER.pack(labels.size, 0.0, header.id, header.id2)
    return head + labels.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[ImageHeader, bytes]:
    """Inverse of ``pack``: the header (label an array when flag > 0) and the payload."""
    if len(record) < _IMAGE_HEADER.size:
        raise RecordIOError(f"record of {len(record)} bytes is shorter than the image header")
    flag, label, id_, id2 = _IMAGE_HEADER.unpack_from(record)
    body = record[_IMAGE_HEADER.size :]
    if flag > 0:
        if len(body) < 4 * flag:
            raise RecordIOError(f"record declares {flag} labels but holds only {len(body)} bytes after its header")
        labels = np.frombuffer(body, dtype="<f4", count=flag).astype(np.float32)
        return ImageHeader(flag, labels, id_, id2), bytes(body[4 * flag :])
    return ImageHeader(flag, label, id_, id2), bytes(body)


# --- files ---------------------------------------------------------------------


class _Closing:
    """Context-manager support for the readers and writers: ``with`` closes the files."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordWriter(_Closing):
    """Appends records to a ``.rec`` file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "wb")

    def tell(self) -> int:
        return self._file.tell()

    def write(self, record: bytes) -> int:
        """Write one record; return the offset it starts at."""
        offset = self._file.tell()
        self._file.write(encode_record(record))
        return offset

    def close(self) -> None:
        self._file.close()


class RecordReader(_Closing):
    """Reads a ``.rec`` file front to back (``read()`` returns None at the end)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "rb", buffering=1 << 20)
        self._offset = 0

    def _read_at(self, n: int, offset: int) -> bytes:
        if self._file.tell() != offset:
            self._file.seek(offset)
        return self._file.read(n)

    def seek(self, offset: int) -> None:
        self._offset = offset

    def tell(self) -> int:
        return self._offset

    def read(self) -> bytes | None:
        record, self._offset = _read_record(self._read_at, self._offset)
        return record

    def __iter__(self) -> Iterator[bytes]:
        while (record := self.read()) is not None:
            yield record

    def close(self) -> None:
        self._file.close()


class IndexedRecordWriter(_Closing):
    """Writes a ``.rec`` and its ``.idx`` (``key<TAB>offset``) together, as MXIndexedRecordIO does."""

    def __init__(self, idx_path: str | Path, rec_path: str | Path):
        self.idx_path = Path(idx_path)
        self._records = RecordWriter(rec_path)
        self._index = open(self.idx_path, "w", encoding="ascii")
        self.keys: list[int] = []

    def write_idx(self, key: int, record: bytes) -> int:
        offset = self._records.write(record)
        self._index.write(f"{int(key)}\t{offset}\n")
        self.keys.append(int(key))
        return offset

    def close(self) -> None:
        self._records.close()
        self._index.close()


def read_index(idx_path: str | Path) -> dict[int, int]:
    """``.idx`` → {key: offset}, in file order."""
    offsets: dict[int, int] = {}
    with open(idx_path, encoding="ascii") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                offsets[int(fields[0])] = int(fields[1])
            except (ValueError, IndexError):
                raise RecordIOError(f"{idx_path}:{number}: expected 'key<TAB>offset', got {line.rstrip()!r}") from None
    return offsets


class IndexedRecordReader(_Closing):
    """Random access to a ``.rec`` through its ``.idx``.

    Reads with ``os.pread`` (no shared file position), so one reader can be
    used from several threads and from processes forked after it was opened;
    pickling reopens the files in the receiving process.
    """

    def __init__(self, idx_path: str | Path, rec_path: str | Path):
        self.idx_path = Path(idx_path)
        self.rec_path = Path(rec_path)
        self._offsets = read_index(self.idx_path)
        self.keys: list[int] = list(self._offsets)
        self._fd = os.open(self.rec_path, os.O_RDONLY)

    def _read_at(self, n: int, offset: int) -> bytes:
        chunks = []
        while n > 0:
            chunk = os.pread(self._fd, n, offset)
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def read_idx(self, key: int) -> bytes:
        try:
            offset = self._offsets[key]
        except KeyError:
            raise RecordIOError(f"key {key} is not in {self.idx_path}") from None
        record, _ = _read_record(self._read_at, offset)
        if record is None:
            raise RecordIOError(f"key {key} points past the end of {self.rec_path} (offset {offset})")
        return record

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for key in self.keys:
            yield key, self.read_idx(key)

    def __getstate__(self) -> dict:
        return {"idx_path": self.idx_path, "rec_path": self.rec_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["idx_path"], state["rec_path"])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()
