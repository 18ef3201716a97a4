"""What captured requests say, measured as the baseline was: answers, refusals, image statistics, features.

A captured record (``monitor.capture.CaptureRecord``) holds the request's image bytes and the
endpoint's answer. From it:

- the answer's probabilities (the endpoint's JSON list of ten, or the verbose object's
  ``probabilities``); an answer that is not probabilities is an error the endpoint gave, so
  the request counts as refused;
- the image check of every stage (``data.imaging.decode_image``): an image that fails it is a
  refused input too, whatever was answered;
- the per-image statistics of ``data.image_stats`` and the live model's pooled features (its
  ``features`` output, on the model's input as its ``preprocess.json`` makes it), both measured
  on the image brought to the form the training records have (``data.convert.transform`` with
  the options the channels were converted with), as the baseline measured the records: one
  frame gives the same numbers as a capture and as a record, so a difference is the traffic's,
  not the conversion's.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from distracted_driver.data.convert import ConvertOptions, transform
from distracted_driver.data.image_stats import STATISTICS, image_statistics
from distracted_driver.data.imaging import ImageError, decode_image
from distracted_driver.data.layout import CLASSES
from distracted_driver.system import cpu_count

CHUNK = 32  # requests measured together: decoded on the thread pool, then one model batch


@dataclass
class Traffic:
    """The measured window: one row per answered request whose image passes the check."""

    requests: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (event id, why)
    event_ids: list[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, len(CLASSES))))
    statistics: dict[str, np.ndarray] = field(default_factory=dict)
    features: np.ndarray | None = None  # [n, F]; None when the live model has no features output
    model_versions: Counter = field(default_factory=Counter)  # from verbose answers that name one

    @property
    def answered(self) -> int:
        return len(self.event_ids)

    @property
    def confidences(self) -> np.ndarray:
        return self.probabilities.max(axis=1) if len(self.probabilities) else np.zeros(0)

    @property
    def predicted_counts(self) -> np.ndarray:
        return (
            np.bincount(self.probabilities.argmax(axis=1), minlength=len(CLASSES))
            if self.answered
            else np.zeros(len(CLASSES), dtype=np.int64)
        )


def answer_probabilities(output) -> np.ndarray | None:
    """The ten probabilities of a parsed endpoint answer, or None when it is not such an answer.

    The answer is the model server's JSON list, its verbose object (``probabilities``), or
    ``{"prediction": [...]}`` as the built-in algorithm may answer; an error answer is None.
    """
    if isinstance(output, dict):
        output = output.get("probabilities", output.get("prediction"))
        if isinstance(output, dict):  # keyed by class, as the REST API answers
            output = [output.get(name) for name in CLASSES]
    if not isinstance(output, list) or len(output) != len(CLASSES):
        return None
    try:
        values = np.asarray(output, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(values).all() or values.min() < 0 or abs(values.sum() - 1.0) > 1e-3:
        return None
    return values


def observe(records, classifier, convert_options: ConvertOptions, progress: bool = False) -> Traffic:
    """Measure captured records against the live model ``classifier`` (a ``serve.inference.Classifier``).

    Records are streamed a chunk at a time (their image bytes are not kept), so a long window
    costs time, not memory.
    """
    traffic = Traffic()
    answers, statistics, features = [], [], []
    with (
        ThreadPoolExecutor(cpu_count()) as pool,
        tqdm(desc="captured requests", unit="req", disable=not progress, mininterval=2) as bar,
    ):
        for chunk in _chunks(records, CHUNK):
            measured = list(pool.map(lambda record: _measure(record, classifier, convert_options), chunk))
            prepared = []
            for record, (probabilities, stats_of_image, tensor, problem) in zip(chunk, measured):
                traffic.requests += 1
                if problem is not None:
                    traffic.refused.append((record.event_id, problem))
                    continue
                traffic.event_ids.append(record.event_id)
                answers.append(probabilities)
                statistics.append(stats_of_image)
                prepared.append(tensor)
                if isinstance(record.output, dict) and record.output.get("model_version"):
                    traffic.model_versions[record.output["model_version"]] += 1
            if prepared and classifier.has_features:
                features.append(classifier.predict_with_features(np.stack(prepared))[1].astype(np.float64))
            bar.update(len(chunk))
    if answers:
        traffic.probabilities = np.stack(answers)
    traffic.statistics = {name: np.array([s[name] for s in statistics], dtype=np.float64) for name in STATISTICS}
    if features:
        traffic.features = np.concatenate(features)
    return traffic


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _measure(record, classifier, options: ConvertOptions):
    """(probabilities, statistics, model input, None) for an answered request whose image passes the check,
    else (None, None, None, why it counts as refused)."""
    probabilities = answer_probabilities(record.output)
    if probabilities is None:
        return None, None, None, f"the endpoint answered {_short(record.output_text)}"
    if not record.input_bytes:
        return None, None, None, "no image in the captured request"
    try:
        record_form = transform(record.input_bytes, options)  # the image check, then the conversion
        return probabilities, image_statistics(decode_image(record_form)), classifier.prepare(record_form), None
    except ImageError as error:
        return None, None, None, f"the image fails the check: {error}"


def _short(text, limit: int = 120) -> str:
    text = " ".join(str(text or "nothing").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
