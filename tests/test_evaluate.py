"""Metrics as Kaggle scores them, the plots, and evaluating an artifact on a real RecordIO channel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distracted_driver.data import recordio
from distracted_driver.data.channel import ChannelError, read_records
from distracted_driver.model.artifact import load_artifact
from distracted_driver.model.evaluate import (
    classification_metrics,
    evaluate_artifact,
    log_loss,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(values: dict[int, float]) -> list[float]:
    row = [0.0] * 10
    for index, value in values.items():
        row[index] = value
    return row


def test_log_loss_clips_and_renormalises_like_kaggle():
    labels = [0, 1, 2]
    probabilities = [
        _row({0: 0.5, 1: 0.25, 2: 0.25}),  # -ln 0.5
        _row({0: 0.1, 1: 0.3}),  # sums to 0.4: 3/4 after dividing by the row sum → -ln 0.75
        _row({0: 1.0}),  # true class at 0 → clipped to 1e-15 → -ln 1e-15 = 15 ln 10
    ]
    expected = (math.log(2) - math.log(0.75) + 15 * math.log(10)) / 3
    assert log_loss(labels, probabilities) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(11.8398685493, rel=1e-10)


def test_clipping_comes_before_renormalising():
    """Values above 1 - 1e-15 are clipped first, so [1, 3] scores as [0.5, 0.5], not [0.25, 0.75]."""
    assert log_loss([1], [_row({0: 1.0, 1: 3.0})]) == pytest.approx(math.log(2), rel=1e-12)


def test_log_loss_of_a_uniform_guess_is_ln_10():
    assert log_loss([3, 7], np.full((2, 10), 0.1)) == pytest.approx(math.log(10))


def test_log_loss_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        log_loss([], np.zeros((0, 10)))


def test_precision_recall_and_confusion_matrix():
    labels = [0, 0, 1, 2]
    probabilities = [_row({0: 0.9, 1: 0.1}), _row({1: 0.6, 0: 0.4}), _row({1: 1.0}), _row({1: 0.7, 2: 0.3})]
    metrics = classification_metrics(labels, probabilities)
    assert metrics["accuracy"] == 0.5
    assert metrics["examples"] == 4
    assert metrics["per_class"]["c0"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert metrics["per_class"]["c1"] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "support": 1}
    assert metrics["per_class"]["c2"] == {"precision": 0.0, "recall": 0.0, "support": 1}
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[1, 1] == 1 and matrix[2, 1] == 1
    assert matrix.sum() == 4


def test_report_writes_metrics_and_pngs(tmp_path):
    metrics = classification_metrics([0, 1], [_row({0: 0.8, 1: 0.2}), _row({1: 0.9, 0: 0.1})])
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_log_loss": 1.2 / e,
            "train_accuracy": 0.5 + e / 10,
            "val_accuracy": 0.4 + e / 10,
        }
        for e in (1, 2, 3)
    ]
    paths = write_report(tmp_path / "report", metrics, history)
    assert set(paths) == {"metrics", "confusion_matrix", "training_curves"}
    for key in ("confusion_matrix", "training_curves"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "report").glob(".*.tmp"))


def _channel_with_bad_records(tiny_channels, directory):
    """Three real validation images, one undecodable payload and one record with an impossible label."""
    records, _ = read_records(tiny_channels / "validation")
    directory.mkdir()
    with recordio.IndexedRecordWriter(directory / "v.idx", directory / "v.rec") as writer:
        for key, record in enumerate(records[:3]):
            writer.write_idx(key, recordio.pack(recordio.ImageHeader(0, float(record.label), key, 0), record.payload))
        writer.write_idx(3, recordio.pack(recordio.ImageHeader(0, 4.0, 3, 0), b"\xff\xd8 not really a jpeg"))
        writer.write_idx(4, recordio.pack(recordio.ImageHeader(0, 12.0, 4, 0), records[0].payload))
    return records[:3]


def test_evaluate_artifact_skips_bad_records_with_reasons(tmp_path, tiny_channels, make_artifact):
    good = _channel_with_bad_records(tiny_channels, tmp_path / "channel")
    artifact = load_artifact(make_artifact("evaluate-model", seed=5).directory)
    metrics = evaluate_artifact(artifact, tmp_path / "channel", progress=False)
    assert metrics["examples"] == len(good)
    reasons = {entry["record"]: entry["reason"] for entry in metrics["skipped"]}
    assert set(reasons) == {"v:3", "v:4"}
    assert "not a JPEG or PNG image" in reasons["v:3"] and "class index" in reasons["v:4"]
    assert 0 <= metrics["accuracy"] <= 1 and metrics["log_loss"] > 0


def test_a_channel_without_records_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChannelError, match="no .rec files"):
        read_records(tmp_path / "empty")
