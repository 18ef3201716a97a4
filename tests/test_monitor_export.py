"""Captured images as a batch waiting for review, and what data.add makes of it."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

import pytest

from distracted_driver.config import Settings
from distracted_driver.data.ingest import REVIEW_HEADER, add_data, read_batch
from distracted_driver.monitor.capture import CaptureRecord
from distracted_driver.monitor.export import ExportError, export_for_review
from distracted_driver.storage.local import LocalStorage

CONFIDENT = [0.91] + [0.01] * 9  # c0
UNSURE = [0.05, 0.05, 0.4, 0.05, 0.05, 0.1, 0.1, 0.1, 0.05, 0.05]  # c2 at 0.4


def _record(event: str, body: bytes, output) -> CaptureRecord:
    return CaptureRecord(
        event_id=event,
        inference_time=datetime(2026, 11, 30, 8, 15, 2, tzinfo=UTC),
        endpoint="distracted-driver",
        variant="AllTraffic",
        input_content_type="image/jpeg",
        input_bytes=body,
        output_content_type="application/json",
        output_text=json.dumps(output),
        output=output,
    )


@pytest.fixture(scope="module")
def images(tiny_channels):
    return [path.read_bytes() for path in sorted((tiny_channels.parent / "sample" / "imgs" / "test").glob("*.jpg"))]


def _rows(directory) -> list[list[str]]:
    with open(directory / "driver_imgs_list.csv", newline="") as handle:
        return list(csv.reader(handle))


def test_an_export_is_a_review_batch_of_distinct_answered_images(tmp_path, images):
    records = [
        _record("8e1f-0001", images[0], CONFIDENT),
        _record("8e1f-0002", images[1], UNSURE),
        _record("8e1f-0003", images[0], CONFIDENT),  # the same image again
        _record("8e1f-0004", b"not a jpeg", {"error": "ImageError", "message": "not an image"}),
        _record("8e1f/../0005", images[2], {"class": "c7", "probabilities": [0.01] * 7 + [0.91] + [0.01] * 2}),
    ]
    report = export_for_review(records, tmp_path / "review")
    assert (report.requests, report.exported, report.refused, report.repeats) == (5, 3, 1, 1)
    assert "inv data.add --from" in str(report)
    rows = _rows(tmp_path / "review")
    assert tuple(rows[0]) == REVIEW_HEADER
    assert rows[1:] == [
        ["", "c0", "capture-8e1f-0001.jpg", "c0", "0.9100", "8e1f-0001", "2026-11-30T08:15:02+00:00"],
        ["", "c2", "capture-8e1f-0002.jpg", "c2", "0.4000", "8e1f-0002", "2026-11-30T08:15:02+00:00"],
        ["", "c7", "capture-8e1f-..-0005.jpg", "c7", "0.9100", "8e1f/../0005", "2026-11-30T08:15:02+00:00"],
    ]
    assert (tmp_path / "review/imgs/train/c2/capture-8e1f-0002.jpg").read_bytes() == images[1]
    assert not list(tmp_path.glob(".review.tmp-*"))
    # Nothing reviewed yet: data.add reads the layout, takes nothing and says how many wait.
    assert [image.reviewed for image in read_batch(tmp_path / "review")] == [False] * 3
    settings = Settings(root=tmp_path)
    added = add_data(LocalStorage(settings.bucket_dir), settings, tmp_path / "review", progress=False)
    assert (added.added, len(added.unreviewed), added.manifest_key) == ([], 3, None)


def test_low_confidence_only_keeps_the_unsure_answers(tmp_path, images):
    records = [_record("a", images[0], CONFIDENT), _record("b", images[1], UNSURE)]
    report = export_for_review(records, tmp_path / "unsure", low_confidence=0.5)
    assert (report.exported, report.confident) == (1, 1)
    assert [row[2] for row in _rows(tmp_path / "unsure")[1:]] == ["capture-b.jpg"]


def test_an_export_never_writes_into_a_folder_that_holds_something(tmp_path, images):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_for_review([_record("a", images[0], CONFIDENT)], tmp_path / "busy")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert export_for_review([_record("a", images[0], CONFIDENT)], tmp_path / "empty").exported == 1


def test_an_interrupted_export_leaves_nothing(tmp_path, images):
    def records():
        yield _record("a", images[0], CONFIDENT)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_for_review(records(), tmp_path / "review")
    assert list(tmp_path.iterdir()) == []
