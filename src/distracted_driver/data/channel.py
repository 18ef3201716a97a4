"""Reading a training channel: a directory of RecordIO files (``.rec`` + ``.idx``), as SageMaker mounts it.

Torch-free, so that evaluation and the quality gate run on a serving install.
A record holds its label and where its bytes are, not the bytes: images are
read, decoded and preprocessed on a thread pool (OpenCV releases the GIL), a
batch at a time, so memory stays bounded whatever the channel's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distracted_driver.data import recordio
from distracted_driver.data.imaging import ImageError, Preprocessing, decode_image, model_input, preprocess
from distracted_driver.data.layout import CLASSES
from distracted_driver.system import cpu_count


class ChannelError(ValueError):
    """The channel directory holds no usable RecordIO files."""


@dataclass(frozen=True)
class Record:
    """One image of a channel: its label, and its bytes given inline or read from the channel when needed."""

    source: str  # "<file stem>:<key>", to name a skipped record
    label: int
    inline_payload: bytes | None = None
    reader: recordio.IndexedRecordReader | None = None  # with ``key``: where the record is
    key: int = 0

    @property
    def payload(self) -> bytes:
        """The image bytes (read from the ``.rec`` each time; os.pread, so any thread may ask)."""
        if self.inline_payload is not None:
            return self.inline_payload
        return recordio.unpack(self.reader.read_idx(self.key))[1]


def record_files(channel_dir: str | Path) -> list[tuple[Path, Path]]:
    """The ``(.idx, .rec)`` pairs of a channel, sorted by name."""
    channel_dir = Path(channel_dir)
    if not channel_dir.is_dir():
        raise ChannelError(f"channel directory {channel_dir} does not exist")
    pairs = []
    for rec in sorted(channel_dir.glob("*.rec")):
        idx = rec.with_suffix(".idx")
        if not idx.is_file():
            raise ChannelError(f"{rec} has no index file {idx.name}")
        pairs.append((idx, rec))
    if not pairs:
        raise ChannelError(f"no .rec files in {channel_dir}")
    return pairs


def _label(header) -> int:
    label = header.label
    value = float(np.asarray(label).reshape(-1)[0]) if np.ndim(label) else float(label)
    index = int(round(value))
    if not 0 <= index < len(CLASSES) or index != value:
        raise ValueError(f"label {value} is not a class index 0..{len(CLASSES) - 1}")
    return index


def read_records(channel_dir: str | Path) -> tuple[list[Record], list[tuple[str, str]]]:
    """Every record of the channel with its class index; records whose header is unusable are skipped.

    Returns ``(records, skipped)`` where ``skipped`` lists ``(source, reason)``. Each record is
    read once here to check it, and its bytes are not kept: ``Record.payload`` reads them again
    (the readers stay open as long as a record refers to them).
    """
    records, skipped = [], []
    for idx, rec in record_files(channel_dir):
        reader = recordio.IndexedRecordReader(str(idx), str(rec))
        for key in reader.keys:
            source = f"{rec.stem}:{key}"
            try:
                header, _ = recordio.unpack(reader.read_idx(key))
                records.append(Record(source, _label(header), reader=reader, key=key))
            except (ValueError, OSError) as error:
                skipped.append((source, str(error)))
    return records, skipped


@dataclass
class DecodedBatch:
    images: np.ndarray  # float32 [n, 3, S, S]
    labels: np.ndarray  # int64 [n]
    sources: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _prepare(record: Record, position: int, params: Preprocessing, augment: Callable | None):
    try:
        if augment is None:
            return model_input(record.payload, params), None
        image = decode_image(record.payload, min_size=params.decode_min_size)
    except (ImageError, recordio.RecordIOError, OSError) as error:
        return None, str(error)
    return preprocess(augment(image, position), params), None


def decoded_batches(
    records: list[Record],
    params: Preprocessing,
    batch_size: int = 32,
    workers: int | None = None,
    augment: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> Iterator[DecodedBatch]:
    """Decode and preprocess ``records`` a batch at a time, in order; undecodable images go to ``failed``.

    ``augment(image, position)`` is applied to the decoded BGR frame of ``records[position]``.
    """
    workers = workers or cpu_count()
    with ThreadPoolExecutor(workers) as pool:
        pending = None
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            future = pool.map(lambda r, i: _prepare(r, i, params, augment), chunk, range(start, start + len(chunk)))
            # Keep one batch in flight ahead of the consumer so decoding overlaps with inference.
            if pending is not None:
                yield _collect(*pending)
            pending = (chunk, future, params)
        if pending is not None:
            yield _collect(*pending)


def _collect(chunk: list[Record], results, params: Preprocessing) -> DecodedBatch:
    arrays, labels, sources, failed = [], [], [], []
    for record, (array, error) in zip(chunk, results):
        if error is not None:
            failed.append((record.source, error))
            continue
        arrays.append(array)
        labels.append(record.label)
        sources.append(record.source)
    size = params.input_size
    images = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)
    return DecodedBatch(images, np.asarray(labels, dtype=np.int64), sources, failed)
