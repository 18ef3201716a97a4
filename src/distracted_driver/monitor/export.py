"""``inv monitor.export``: captured images as a batch waiting for review, in the State Farm layout.

    <out>/imgs/train/<model's guess>/capture-<event id>.jpg
    <out>/driver_imgs_list.csv   subject,classname,img,model_class,model_confidence,event_id,captured_at

``subject`` is empty and ``classname`` holds the model's guess. A person fills in the driver
and corrects the label, in the row or by moving the file to its class folder; ``inv data.add
--from <out>`` then adds the reviewed rows and counts the others (``data.ingest``). Requests
the endpoint refused, images that fail the image check and repeats of an image already
exported are left out and counted. The batch is written under a temporary name and renamed
into place when complete.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.data.imaging import PNG_MAGIC, ImageError, decode_image
from distracted_driver.data.ingest import REVIEW_HEADER
from distracted_driver.data.layout import CLASSES, DRIVER_LIST, TRAIN_DIR
from distracted_driver.hashing import sha256_bytes
from distracted_driver.monitor.capture import iter_capture_records
from distracted_driver.monitor.drift import DriftThresholds
from distracted_driver.monitor.report import THRESHOLDS
from distracted_driver.monitor.traffic import answer_probabilities
from distracted_driver.storage import open_storage

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ExportError(ValueError):
    """The output directory is not ours to write."""


@dataclass
class ExportReport:
    out_dir: Path
    requests: int = 0
    exported: int = 0
    refused: int = 0  # error answers and images failing the check
    confident: int = 0  # left out by --low-confidence-only
    repeats: int = 0  # the same image bytes exported already

    def __str__(self) -> str:
        left = [f"{self.refused} refused", f"{self.repeats} repeated"]
        if self.confident:
            left.append(f"{self.confident} confident")
        return (
            f"{self.exported} of {self.requests} captured requests exported for review ({', '.join(left)} "
            f"left out) -> {self.out_dir}\nreview: fill in each row's subject (pNNN) and correct its classname "
            f"(in {DRIVER_LIST}, or move the file to its class folder), then inv data.add --from {self.out_dir}"
        )


def export_for_review(records, out_dir: str | Path, low_confidence: float | None = None) -> ExportReport:
    """Write the captured ``records`` as a review batch in ``out_dir`` (which must not hold anything yet).

    With ``low_confidence``, only answers whose top probability is below it are exported.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not empty: choose a new --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name in CLASSES:
            (staging / TRAIN_DIR / name).mkdir(parents=True)
        rows, seen = [], set()
        for record in records:
            report.requests += 1
            row = _review_row(record, staging, low_confidence, seen, report)
            if row is not None:
                rows.append(row)
        with open(staging / DRIVER_LIST, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(REVIEW_HEADER)
            writer.writerows(rows)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.exported = len(rows)
    return report


def _review_row(record, root: Path, low_confidence: float | None, seen: set[str], report: ExportReport):
    probabilities = answer_probabilities(record.output)
    if probabilities is None or not record.input_bytes:
        report.refused += 1
        return None
    try:
        decode_image(record.input_bytes)
    except ImageError:
        report.refused += 1
        return None
    confidence = float(probabilities.max())
    if low_confidence is not None and confidence >= low_confidence:
        report.confident += 1
        return None
    digest = sha256_bytes(record.input_bytes)
    if digest in seen:
        report.repeats += 1
        return None
    seen.add(digest)
    guess = CLASSES[int(probabilities.argmax())]
    suffix = ".png" if record.input_bytes.startswith(PNG_MAGIC) else ".jpg"
    name = f"capture-{_UNSAFE.sub('-', str(record.event_id)) or digest[:16]}{suffix}"
    (root / TRAIN_DIR / guess / name).write_bytes(record.input_bytes)
    return ("", guess, name, guess, f"{confidence:.4f}", record.event_id, _iso(record.inference_time))


def _iso(moment) -> str:
    return moment.isoformat(timespec="seconds") if isinstance(moment, datetime) else str(moment or "")


def export_window(
    settings: Settings,
    out_dir: str | Path,
    since=None,
    variant: str | None = None,
    low_confidence_only: bool = False,
    thresholds: str | Path | None = None,
) -> ExportReport:
    """The captured records of a window (the same reader as the drift report) as a review batch."""

    limit = None
    if low_confidence_only:
        limit = DriftThresholds.load(thresholds or THRESHOLDS).low_confidence
    records = iter_capture_records(
        open_storage(settings), settings.capture_prefix, settings.endpoint_name, since=since, variant=variant
    )
    return export_for_review(records, out_dir, limit)
