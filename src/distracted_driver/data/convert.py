"""``.lst`` files → RecordIO channels (``.rec`` + ``.idx`` + ``.lst``) and a manifest: im2rec's job.

Each image is read, decoded, optionally centre-cropped, resized so that its
shorter edge is ``resize`` pixels (the size arithmetic and the bilinear
interpolation of MXNet's ``im2rec.py``, so the records match what im2rec
would write), re-encoded and packed with the header (label = class index,
id = the ``.lst`` index).

Speed: images are processed in worker processes, in chunks, with a bounded
number of chunks in flight (memory stays flat whatever the data size), and
written by this process in ``.lst`` order. Images are decoded by
``imaging.decode_image``, the one strict decoder of every stage: JPEGs by
libjpeg-turbo through ``simplejpeg``, whose pixels are ``cv2.imread``'s
(what im2rec uses; a test pins this) at about 1 ms less per image, and a
damaged image is skipped with the reason rather than stored with grey rows.

Atomic: the channel files are written under temporary names and renamed when
complete; ``manifest.json`` is removed first and written last, so a directory
without a manifest is an unfinished conversion.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from distracted_driver.data import layout, recordio
from distracted_driver.data.imaging import ImageError, decode_image
from distracted_driver.data.split import SPLIT_INFO, SPLITS, ListEntry, class_histogram, format_lst_line, read_lst
from distracted_driver.fsutil import atomic_path, naming_failed_writes, write_json_atomic
from distracted_driver.hashing import sha256_file, sha256_json
from distracted_driver.system import cpu_count

MANIFEST = "manifest.json"
FORMAT = "mxnet-recordio"
CONVERTER_VERSION = 1
ENCODINGS = (".jpg", ".png")
INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
MAX_CHUNK = 32  # images per task sent to a worker; each task costs the pool's threads about half a millisecond
IN_FLIGHT_PER_WORKER = 4  # chunks queued per worker: enough to keep it busy, small enough to bound memory
WORKER_START_TIMEOUT = 30  # seconds; workers start in well under one


@dataclass(frozen=True)
class ConvertOptions:
    """What the converter does to each image; stored in the manifest."""

    resize: int = 256  # shorter edge in pixels; 0 keeps the size
    center_crop: bool = False
    quality: int | None = None  # JPEG quality 1-100 (default 95) or PNG compression 0-9 (default 3)
    encoding: str = ".jpg"
    pass_through: bool = False  # store the source file's bytes unchanged
    interpolation: str = "linear"  # im2rec's cv2.resize default; "area" for anti-aliased shrinking

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"--encoding must be one of {ENCODINGS}, not {self.encoding!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"--interpolation must be one of {tuple(INTERPOLATIONS)}, not {self.interpolation!r}")
        if self.resize < 0:
            raise ValueError(f"--resize must be >= 0, not {self.resize}")
        low, high = (1, 100) if self.encoding == ".jpg" else (0, 9)
        if self.quality is not None and not low <= self.quality <= high:
            raise ValueError(f"--quality for {self.encoding} must be between {low} and {high}, not {self.quality}")

    @property
    def effective_quality(self) -> int:
        if self.quality is not None:
            return self.quality
        return 95 if self.encoding == ".jpg" else 3

    def to_dict(self) -> dict:
        return {**asdict(self), "quality": self.effective_quality}


# --- one image --------------------------------------------------------------------


def center_crop(image: np.ndarray) -> np.ndarray:
    """The centred square, as im2rec's ``--center-crop``."""
    height, width = image.shape[:2]
    if height > width:
        margin = (height - width) // 2
        return image[margin : margin + width]
    margin = (width - height) // 2
    return image[:, margin : margin + height]


def resized_shape(width: int, height: int, shorter_edge: int) -> tuple[int, int]:
    """(width, height) with the shorter edge set, the other scaled and floored, as im2rec computes it."""
    if height > width:
        return shorter_edge, height * shorter_edge // width
    return width * shorter_edge // height, shorter_edge


def transform(data: bytes, options: ConvertOptions) -> bytes:
    """Source image bytes → the payload stored in the record (raises ImageError for a damaged image)."""
    image = decode_image(data)  # with --pass-through too: only images every later stage can decode are stored
    if options.pass_through:
        return data
    if options.center_crop:
        image = center_crop(image)
    if options.resize:
        size = resized_shape(image.shape[1], image.shape[0], options.resize)
        if size != (image.shape[1], image.shape[0]):
            image = cv2.resize(image, size, interpolation=INTERPOLATIONS[options.interpolation])
    flag = cv2.IMWRITE_JPEG_QUALITY if options.encoding == ".jpg" else cv2.IMWRITE_PNG_COMPRESSION
    ok, encoded = cv2.imencode(options.encoding, image, [flag, options.effective_quality])
    if not ok:
        raise ImageError(f"OpenCV could not encode the image as {options.encoding}")
    return encoded.tobytes()


@dataclass(frozen=True)
class Encoded:
    """What a worker sends back for one ``.lst`` entry."""

    entry: ListEntry
    record: bytes | None  # None: skipped
    reason: str | None = None
    source_sha256: str | None = None


class _Encoder:
    def __init__(self, image_root: Path, options: ConvertOptions):
        self.image_root = image_root
        self.options = options

    def __call__(self, entry: ListEntry) -> Encoded:
        path = self.image_root / entry.path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return Encoded(entry, None, "missing file")
        except OSError as error:
            return Encoded(entry, None, f"unreadable: {error.strerror or error}")
        digest = hashlib.sha256(data).hexdigest()
        try:
            payload = transform(data, self.options)
        except ImageError as error:
            return Encoded(entry, None, str(error), digest)
        except cv2.error as error:
            return Encoded(entry, None, f"OpenCV error: {str(error).strip().splitlines()[-1]}", digest)
        header = recordio.ImageHeader(0, float(entry.label), entry.index, 0)
        return Encoded(entry, recordio.pack(header, payload), None, digest)


_worker_encoder: _Encoder | None = None


def _start_worker(image_root: Path, options: ConvertOptions) -> None:
    global _worker_encoder
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would only contend
    _worker_encoder = _Encoder(image_root, options)


def _worker_ready() -> bool:
    return _worker_encoder is not None


def _encode_chunk(entries: list[ListEntry]) -> list[Encoded]:
    return [_worker_encoder(entry) for entry in entries]


def default_workers() -> int:
    return cpu_count()


class EncoderPool:
    """The worker processes of a conversion; with ``workers <= 1`` images are encoded in this process.

    Workers come from a fork server that has this module (OpenCV included) preloaded, so each starts in
    milliseconds, and none inherits the caller's threads: a plain fork of a process that has used OpenCV
    deadlocks in the child on OpenCV's thread pool. Like every spawn/forkserver pool, this needs the
    caller's ``__main__`` to be importable and guarded (``if __name__ == "__main__":``); workers that
    cannot start are reported as an error instead of being respawned forever.
    """

    def __init__(self, image_root: str | Path, options: ConvertOptions, workers: int | None = None):
        self.args = (Path(image_root), options)
        self.workers = workers or default_workers()
        self._pool = None

    def __enter__(self) -> EncoderPool:
        if self.workers > 1:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            self._pool = context.Pool(self.workers, initializer=_start_worker, initargs=self.args)
            try:
                self._pool.apply_async(_worker_ready).get(timeout=WORKER_START_TIMEOUT)
            except multiprocessing.TimeoutError:
                self.__exit__()
                raise RuntimeError(
                    f"the {self.workers} converter worker processes did not start within {WORKER_START_TIMEOUT} s; "
                    "a script that converts must guard its top level with `if __name__ == '__main__':` "
                    "(or use workers=1)"
                ) from None
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def encode(self, entries: list[ListEntry]) -> Iterator[Encoded]:
        """Encode every entry, yielding results in input order with a bounded number of chunks in flight."""
        if self._pool is None:
            encoder = _Encoder(*self.args)
            yield from (encoder(entry) for entry in entries)
            return
        chunk = max(1, min(MAX_CHUNK, len(entries) // (self.workers * IN_FLIGHT_PER_WORKER * 2)))
        pending: collections.deque = collections.deque()
        for i in range(0, len(entries), chunk):
            pending.append(self._pool.apply_async(_encode_chunk, (entries[i : i + chunk],)))
            if len(pending) >= self.workers * IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


# --- one channel ------------------------------------------------------------------------


@dataclass
class ChannelReport:
    name: str
    directory: Path
    records: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    bytes: int = 0
    seconds: float = 0.0
    class_histogram: dict[str, int] = field(default_factory=dict)
    inputs_sha256: str = ""
    files: dict[str, dict] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return (self.records + len(self.skipped)) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        text = (
            f"  {self.name:<10} {self.records:>6} written, {len(self.skipped)} skipped, "
            f"{self.bytes / 1e6:.1f} MB, {self.images_per_second:.0f} images/s -> {self.directory}"
        )
        reasons = collections.Counter(reason for _, reason in self.skipped)
        for reason, count in reasons.most_common():
            example = next(path for path, r in self.skipped if r == reason)
            text += f"\n    skipped {count}: {reason} (e.g. {example})"
        return text


def convert_list(
    lst_path: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    options: ConvertOptions = ConvertOptions(),
    workers: int | None = None,
    progress: bool = True,
    pool: EncoderPool | None = None,
) -> ChannelReport:
    """Convert one ``.lst`` into ``out_dir/<name>.rec``, ``.idx`` and ``.lst`` (the entries written).

    ``pool`` (already entered, same image root and options) is used instead of starting workers for this list.
    """
    entries = read_lst(lst_path)
    duplicates = [i for i, n in collections.Counter(e.index for e in entries).items() if n > 1]
    if duplicates:
        raise ValueError(f"{lst_path}: index {duplicates[0]} appears more than once")
    report = ChannelReport(name or Path(lst_path).stem, Path(out_dir))
    if pool is not None:
        return _write_channel(entries, pool, report, progress)
    with EncoderPool(image_root, options, workers) as own_pool:
        return _write_channel(entries, own_pool, report, progress)


def _write_channel(entries: list[ListEntry], pool: EncoderPool, report: ChannelReport, progress: bool) -> ChannelReport:
    started = time.perf_counter()
    paths = [report.directory / f"{report.name}{ext}" for ext in (".rec", ".idx", ".lst")]
    inputs = hashlib.sha256()
    written: list[ListEntry] = []
    with (
        naming_failed_writes(paths[0]),  # the big one; the .idx and .lst are beside it
        atomic_path(paths[0]) as tmp_rec,
        atomic_path(paths[1]) as tmp_idx,
        atomic_path(paths[2]) as tmp_lst,
        recordio.IndexedRecordWriter(tmp_idx, tmp_rec) as writer,
        open(tmp_lst, "w", encoding="utf-8") as listing,
        tqdm(total=len(entries), desc=report.name, unit="img", disable=not progress, smoothing=0.1) as bar,
    ):
        for result in pool.encode(entries):
            entry = result.entry
            inputs.update(f"{entry.index}\t{entry.label:f}\t{entry.path}\t{result.source_sha256}\n".encode())
            if result.record is None:
                report.skipped.append((entry.path, result.reason))
            else:
                writer.write_idx(entry.index, result.record)
                listing.write(format_lst_line(entry))
                written.append(entry)
            bar.update()
    report.seconds = time.perf_counter() - started
    report.records = len(written)
    report.bytes = paths[0].stat().st_size
    report.class_histogram = class_histogram(written)
    report.inputs_sha256 = inputs.hexdigest()
    report.files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in paths}
    return report


# --- both channels and the manifest ---------------------------------------------------------


@dataclass
class ConvertReport:
    directory: Path
    manifest: dict
    channels: list[ChannelReport]

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def summary(self) -> str:
        lines = [f"converted -> {self.directory}"]
        lines += [channel.summary() for channel in self.channels]
        lines.append(f"  manifest   {self.manifest_path} (dataset {self.manifest['dataset_sha256'][:12]})")
        return "\n".join(lines)


def convert_lists(
    lists_dir: str | Path,
    out_dir: str | Path,
    options: ConvertOptions = ConvertOptions(),
    workers: int | None = None,
    image_root: str | Path | None = None,
    progress: bool = True,
) -> ConvertReport:
    """Convert ``lists_dir/{train,validation}.lst`` into ``out_dir/<split>/`` and write ``out_dir/manifest.json``.

    The image root comes from ``lists_dir/split.json`` (written by the split) unless given.
    """
    lists_dir, out_dir = Path(lists_dir), Path(out_dir)
    split_info = _read_split_info(lists_dir)
    if image_root is None:
        if not split_info.get("image_root"):
            raise ValueError(f"no {SPLIT_INFO} in {lists_dir}: give the image root (--images)")
        image_root = split_info["image_root"]
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise FileNotFoundError(f"image root {image_root} is not a directory")
    names = [name for name in SPLITS if (lists_dir / f"{name}.lst").is_file()]
    if "train" not in names:
        raise FileNotFoundError(f"no train.lst in {lists_dir}")
    _start_over(out_dir)
    with EncoderPool(image_root, options, workers) as pool:
        channels = [
            convert_list(
                lists_dir / f"{name}.lst", image_root, out_dir / name, name, options, progress=progress, pool=pool
            )
            for name in names
        ]
    manifest = build_manifest(channels, options, split_info)
    write_json_atomic(out_dir / MANIFEST, manifest)  # last: its presence marks a complete conversion
    return ConvertReport(out_dir, manifest, channels)


def _read_split_info(lists_dir: Path) -> dict:
    path = lists_dir / SPLIT_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def _start_over(out_dir: Path) -> None:
    """Mark the directory incomplete and drop leftovers of interrupted runs."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for leftover in out_dir.glob("*/.*.tmp"):
        leftover.unlink(missing_ok=True)


def build_manifest(channels: list[ChannelReport], options: ConvertOptions, split_info: dict) -> dict:
    """The manifest: deterministic for the same inputs and options (no clock, no paths)."""
    drivers = split_info.get("drivers") or {}
    splits = {
        c.name: {
            "records": c.records,
            "skipped": [{"path": path, "reason": reason} for path, reason in c.skipped],
            "bytes": c.bytes,
            "class_histogram": c.class_histogram,
            "drivers": drivers.get(c.name),
            "inputs_sha256": c.inputs_sha256,
            "files": {f"{c.name}/{file}": info for file, info in c.files.items()},
        }
        for c in channels
    }
    return {
        "format": FORMAT,
        "converter_version": CONVERTER_VERSION,
        "classes": list(layout.CLASSES),
        "options": options.to_dict(),
        "dataset_sha256": sha256_json(
            {"options": options.to_dict(), "inputs": {c.name: c.inputs_sha256 for c in channels}}
        ),
        "source": {
            "driver_list_sha256": split_info.get("driver_list_sha256"),
            "split": split_info.get("strategy"),
            "split_warnings": split_info.get("warnings", []),
        },
        "counts": {c.name: {"written": c.records, "skipped": len(c.skipped)} for c in channels},
        "splits": splits,
    }
