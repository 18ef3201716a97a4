"""The quality gate: it scores the candidate's served model itself, and keeps a smoke set for serving.

The gate never reads a score. The ``metrics.json`` a candidate brought (and the
registry entry copied from it) is information for people; a model with rotated
labels or no softmax can carry any numbers. Instead the gate

1. downloads the validation channel of the data manifest in the bucket (each
   file checked against the manifest: the manifest's sha256 names the
   validation set);
2. runs the candidate's served model on it exactly as a model server does
   (``model.inference.Classifier`` over ``ModelArtifact.served_model_path``,
   pixels prepared by the artifact's own ``preprocess.json``), refusing outputs
   that are not probabilities; and its other precision too (fp32 and int8, when
   the artifact holds both), to apply the precision rule (``model.precision``)
   to its own scores: an artifact that serves a precision the rule does not
   choose from them is rejected, so int8 serves only where the gate saw it
   within the tolerance of fp32;
3. scores the live model the same way on the same images (kept in the live
   entry while its artifact is unchanged), and compares log losses; with no
   live model the candidate must beat a fraction of ln 10, the uniform guess;
4. keeps a smoke set: a few validation images per class with the
   probabilities it computed for them, so that after a swap the endpoint can be
   asked for the same answers (``hosting.release.verify_endpoint``).

Every decision is stored at ``registry/gates/<job>/<data manifest sha256>.json``.
A deploy asks ``clearance`` for a passing one.
"""

from __future__ import annotations

import base64
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from distracted_driver.config import Settings, Tolerance
from distracted_driver.data.layout import CLASSES
from distracted_driver.data.payload import image_content_type
from distracted_driver.hashing import sha256_bytes, sha256_file
from distracted_driver.model.artifact import ArtifactError, NotProbabilities
from distracted_driver.model.evaluate import classification_metrics, precision_summary, predict_precisions
from distracted_driver.model.precision import FP32, INT8, choose_from_scores
from distracted_driver.model.registry import Registry, RegistryError
from distracted_driver.storage import KeyNotFound, Storage

# A candidate may be worse than the live model by at most this much validation log loss.
DEFAULT_TOLERANCE = 0.05
# The first model must reach this fraction of ln(10), the log loss of a uniform guess.
DEFAULT_BASELINE_FRACTION = 0.5
UNIFORM_LOG_LOSS = math.log(len(CLASSES))
# Validation images per class kept in the smoke set.
DEFAULT_SMOKE_PER_CLASS = 2
# The most any probability served for a smoke image may differ from the gate's. Serving the same
# file with the same preprocessing differs by float rounding (under 1e-6); a preprocessing change
# moves probabilities by tenths (see docs/training.md, "Smoke set").
SMOKE_TOLERANCE = 0.01
MANIFEST = "manifest.json"
VALIDATION = "validation"


class GateError(RuntimeError):
    """The gate could not score: no validation data, or data that does not match its manifest."""


class NotCleared(RuntimeError):
    """A deploy was asked for a model without a passing gate record for the current validation set."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the smoke set ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeSet:
    """Labelled validation images and the probabilities offline evaluation computed for each."""

    images: tuple[bytes, ...]
    labels: tuple[int, ...]
    probabilities: tuple[tuple[float, ...], ...]
    sources: tuple[str, ...]  # "<channel file>:<record key>"
    model: str = ""  # the version whose served model computed the probabilities
    artifact_sha256: str = ""

    @property
    def accuracy(self) -> float:
        predicted = np.asarray(self.probabilities).argmax(axis=1)
        return float((predicted == np.asarray(self.labels)).mean())

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def content_type(image: bytes) -> str:
        """The channel stores JPEG (or, converted with ``--encoding .png``, PNG) bytes."""
        return image_content_type(image) or "image/jpeg"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "artifact_sha256": self.artifact_sha256,
            "accuracy": self.accuracy,
            "images": [
                {
                    "source": source,
                    "label": label,
                    "class": CLASSES[label],
                    "probabilities": list(probabilities),
                    "image_base64": base64.b64encode(image).decode(),
                }
                for image, label, probabilities, source in zip(
                    self.images, self.labels, self.probabilities, self.sources
                )
            ],
        }

    @classmethod
    def from_dict(cls, value: dict) -> SmokeSet:
        items = value["images"]
        return cls(
            tuple(base64.b64decode(item["image_base64"]) for item in items),
            tuple(int(item["label"]) for item in items),
            tuple(tuple(float(p) for p in item["probabilities"]) for item in items),
            tuple(item["source"] for item in items),
            value.get("model", ""),
            value.get("artifact_sha256", ""),
        )


def choose_smoke_set(
    predictions, per_class: int = DEFAULT_SMOKE_PER_CLASS, model: str = "", artifact_sha256: str = ""
) -> SmokeSet:
    """The first ``per_class`` scored records of each class, in channel order, with their probabilities."""
    chosen: list[int] = []
    for label in range(len(CLASSES)):
        chosen.extend(np.flatnonzero(predictions.labels == label)[:per_class].tolist())
    chosen.sort()
    return SmokeSet(
        tuple(predictions.records[i].payload for i in chosen),
        tuple(int(predictions.labels[i]) for i in chosen),
        tuple(tuple(float(p) for p in predictions.probabilities[i]) for i in chosen),
        tuple(predictions.records[i].source for i in chosen),
        model,
        artifact_sha256,
    )


# --- scoring a served model on the current validation set ----------------------------------------


def fetch_validation(storage: Storage, settings: Settings, directory: Path) -> str:
    """Download the bucket's validation channel into ``directory/validation``, each file checked against
    the data manifest; returns the manifest's sha256 (the name of this validation set)."""
    prefix = settings.data_prefix.strip("/")
    try:
        raw = storage.get_bytes(f"{prefix}/{MANIFEST}")
    except KeyNotFound:
        raise GateError(
            f"no data manifest at {storage.uri(f'{prefix}/{MANIFEST}')}: the gate has no validation "
            "images to score with (upload the channels: inv data.upload)"
        ) from None
    files = json.loads(raw).get("splits", {}).get(VALIDATION, {}).get("files", {})
    if not files:
        raise GateError(f"the data manifest at {storage.uri(prefix)} lists no validation channel")
    for relative, info in sorted(files.items()):
        target = directory / relative
        try:
            storage.get_file(f"{prefix}/{relative}", target)
        except KeyNotFound:
            raise GateError(
                f"{storage.uri(f'{prefix}/{relative}')} is listed in the data manifest but missing"
            ) from None
        if sha256_file(target) != info["sha256"]:
            raise GateError(
                f"{storage.uri(f'{prefix}/{relative}')} does not match the data manifest (is an upload in progress?)"
            )
    return sha256_bytes(raw)


@dataclass
class Scored:
    """One served model's result on the validation set."""

    job: str
    artifact_sha256: str
    served_file: str
    served_sha256: str
    log_loss: float
    accuracy: float
    examples: int
    skipped: int
    predictions: object = None  # evaluate.Predictions, kept in memory for the smoke set
    precision: str = FP32  # the served one
    by_precision: dict = field(
        default_factory=dict
    )  # each precision scored → log_loss, accuracy, examples (or problem)

    def scores(self) -> dict:
        return {
            "log_loss": self.log_loss,
            "accuracy": self.accuracy,
            "examples": self.examples,
            "skipped": self.skipped,
            "artifact_sha256": self.artifact_sha256,
            "served_file": self.served_file,
            "served_sha256": self.served_sha256,
            "precision": self.precision,
            "by_precision": self.by_precision,
        }


def score_served_model(
    registry: Registry, job: str, channel: Path, workspace: Path, every_precision: bool = False
) -> Scored:
    """Fetch ``job``'s artifact from the bucket and score its served model on ``channel``
    (and, with ``every_precision``, each other model it holds, on the same decoded images).

    Raises ``NotProbabilities`` when the served model's outputs are not probabilities, ``RegistryError``
    or ``ArtifactError`` when it cannot be fetched or loaded.
    """
    artifact = registry.fetch_artifact(job, workspace)
    precisions = artifact.precisions if every_precision else [artifact.served_precision]
    try:
        results = predict_precisions(artifact, channel, precisions, progress=False)
    except ArtifactError:
        raise
    except ValueError as error:  # an unreadable channel, or not one usable image in it
        raise GateError(f"cannot score {job} on the validation channel: {error}") from None
    predictions = results[artifact.served_precision]
    if isinstance(predictions, NotProbabilities):
        raise predictions
    by_precision = precision_summary(
        {
            precision: {"problem": str(result)}
            if isinstance(result, NotProbabilities)
            else classification_metrics(result.labels, result.probabilities)
            for precision, result in results.items()
        }
    )
    served = artifact.served_model_path
    metrics = by_precision[artifact.served_precision]
    return Scored(
        job,
        sha256_file(workspace / "model.tar.gz"),
        served.name,
        sha256_file(served),
        metrics["log_loss"],
        metrics["accuracy"],
        metrics["examples"],
        len(predictions.skipped),
        predictions,
        artifact.served_precision,
        by_precision,
    )


def precision_verdict(scored: Scored, tolerance: Tolerance) -> dict:
    """The precision rule on the gate's own scores: what it chooses, against what the artifact serves."""
    choice = choose_from_scores(scored.by_precision, tolerance)
    return {
        "served": scored.precision,
        "chosen": choice.precision,
        "agrees": choice.precision == scored.precision,
        "tolerance": str(tolerance),
        "limit": choice.limit,
        "reason": choice.reason,
        "scores": scored.by_precision,
    }


# --- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    candidate: str
    candidate_log_loss: float | None
    candidate_accuracy: float | None
    live: str | None
    live_log_loss: float | None
    live_accuracy: float | None
    data_manifest_sha256: str
    artifact_sha256: str
    examples: int
    smoke_images: int
    record_key: str
    precision: str | None = None  # what the candidate serves
    fp32_log_loss: float | None = None  # the gate's scores of each of the candidate's models
    int8_log_loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def report_lines(self) -> list[str]:
        """``inv model.gate``: the verdict with its reason, and the precision the candidate serves."""
        lines = [f"gate {'PASSED' if self.passed else 'REJECTED'}: {self.reason}"]
        return lines + ([self.precision_line()] if self.precision else [])

    def precision_line(self) -> str:
        """Which precision the candidate serves, with the gate's own log loss of each."""

        def loss(value):
            return "-" if value is None else f"{value:.4f}"

        return (
            f"{self.candidate} serves {self.precision}: validation log loss fp32 {loss(self.fp32_log_loss)}, "
            f"int8 {loss(self.int8_log_loss)} (the gate's own scores)"
        )


def judge(
    registry: Registry,
    candidate: str = "latest",
    tolerance: float = DEFAULT_TOLERANCE,
    baseline_fraction: float = DEFAULT_BASELINE_FRACTION,
    smoke_per_class: int = DEFAULT_SMOKE_PER_CLASS,
    int8_tolerance: str | None = None,
) -> GateDecision:
    """Score ``candidate`` (and the live model) on the current validation set, decide, and store the record.

    ``int8_tolerance`` (default: the setting, ``DD_INT8_TOLERANCE``) is the precision rule's tolerance.
    """
    int8 = Tolerance.parse(registry.settings.int8_tolerance if int8_tolerance is None else int8_tolerance)
    job = registry.get(candidate)["job"]
    live = registry.live()
    live_job = live["job"] if live else None
    settings = registry.settings
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="gate-") as tmp:
        workspace = Path(tmp)
        data_sha256 = fetch_validation(registry.storage, settings, workspace)
        channel = workspace / VALIDATION
        record = {
            "candidate": job,
            "artifact_key": registry.artifact_key(job),
            "data_manifest_sha256": data_sha256,
            "live": live_job,
            "tolerance": tolerance,
            "baseline_fraction": baseline_fraction,
            "gated": _now(),
            "scores": {"candidate": None, "live": None},
            "precision": None,
            "smoke": None,
        }
        try:
            scored = score_served_model(registry, job, channel, workspace / "candidate", every_precision=True)
        except NotProbabilities as error:
            record.update(
                passed=False,
                reason=f"{job} is rejected: {error}",
                artifact_sha256=registry.storage.checksum(registry.artifact_key(job)),
            )
            return _decided(registry, record, None, None)
        record["artifact_sha256"] = scored.artifact_sha256
        record["scores"]["candidate"] = scored.scores()
        record["precision"] = precision = precision_verdict(scored, int8)
        registry.record_evaluation(job, data_sha256, scored.scores())
        smoke = choose_smoke_set(scored.predictions, smoke_per_class, job, scored.artifact_sha256)
        record["smoke"] = smoke.to_dict()
        if not precision["agrees"]:
            record.update(
                passed=False,
                reason=(
                    f"{job} serves {precision['served']}, but on the gate's own scores the precision rule chooses "
                    f"{precision['reason']}; the artifact was made with tolerance "
                    f"{_artifact_tolerance(registry, job)}, the gate's is {int8} (DD_INT8_TOLERANCE): retrain with it"
                ),
            )
            return _decided(registry, record, scored, None)
        if live_job == job:
            record.update(
                passed=True,
                reason=f"{job} is the live model; it scores log loss {scored.log_loss:.4f} "
                f"(accuracy {scored.accuracy:.3f}) on {scored.examples} validation images",
            )
            return _decided(registry, record, scored, scored)
        live_scores, why_not = (
            (None, "")
            if live_job is None
            else _live_scores(registry, live_job, channel, data_sha256, workspace / "live")
        )
        record["scores"]["live"] = live_scores
        record.update(_verdict(job, scored, live_job, live_scores, why_not, tolerance, baseline_fraction))
        return _decided(registry, record, scored, live_scores)


def _live_scores(
    registry: Registry, live_job: str, channel: Path, data_sha256: str, workspace: Path
) -> tuple[dict | None, str]:
    """The live model's scores on this validation set (the gate's own, kept while its artifact is the same),
    or None and why it could not be scored."""
    try:
        entry = registry.get(live_job)
        known = entry.get("evaluations", {}).get(data_sha256)
        current = registry.storage.checksum(entry["artifact_key"])
        if known and known.get("artifact_sha256") == current and "served_sha256" in known:
            return known, ""
        scores = score_served_model(registry, live_job, channel, workspace).scores()
        registry.record_evaluation(live_job, data_sha256, scores)
        return scores, ""
    except (RegistryError, ArtifactError) as error:
        return None, str(error)


def _verdict(
    job: str,
    scored: Scored,
    live_job: str | None,
    live: dict | None,
    why_not: str,
    tolerance: float,
    baseline_fraction: float,
) -> dict:
    ours = (
        f"{job} scores validation log loss {scored.log_loss:.4f} (accuracy {scored.accuracy:.3f}) "
        f"on {scored.examples} images"
    )
    if live is None:
        threshold = baseline_fraction * UNIFORM_LOG_LOSS
        passed = scored.log_loss < threshold
        context = "no live model" if live_job is None else f"the live model {live_job} could not be scored ({why_not})"
        return {
            "passed": passed,
            "reason": (
                f"{context}: {ours}, {'below' if passed else 'not below'} {threshold:.4f} "
                f"({baseline_fraction:g} x ln 10, the uniform guess's log loss)"
            ),
        }
    limit = live["log_loss"] + tolerance
    passed = scored.log_loss <= limit
    return {
        "passed": passed,
        "reason": (
            f"{ours}; live {live_job} scores {live['log_loss']:.4f} (accuracy {live['accuracy']:.3f}) on the same "
            f"images; {'within' if passed else 'worse than'} the tolerance of {tolerance:g} (limit {limit:.4f})"
        ),
    }


def _artifact_tolerance(registry: Registry, job: str) -> str:
    return str((registry.get(job).get("serving") or {}).get("tolerance") or "unknown")


def _decided(registry: Registry, record: dict, scored: Scored | None, live: dict | Scored | None) -> GateDecision:
    key = registry.save_gate_record(record)
    live_scores = live.scores() if isinstance(live, Scored) else live
    by_precision = scored.by_precision if scored else {}
    return GateDecision(
        passed=record["passed"],
        reason=record["reason"],
        candidate=record["candidate"],
        candidate_log_loss=scored.log_loss if scored else None,
        candidate_accuracy=scored.accuracy if scored else None,
        live=record["live"],
        live_log_loss=live_scores["log_loss"] if live_scores else None,
        live_accuracy=live_scores["accuracy"] if live_scores else None,
        data_manifest_sha256=record["data_manifest_sha256"],
        artifact_sha256=record["artifact_sha256"] or "",
        examples=scored.examples if scored else 0,
        smoke_images=len(record["smoke"]["images"]) if record["smoke"] else 0,
        record_key=key,
        precision=scored.precision if scored else None,
        fp32_log_loss=by_precision.get(FP32, {}).get("log_loss"),
        int8_log_loss=by_precision.get(INT8, {}).get("log_loss"),
    )


# --- what a deploy needs -------------------------------------------------------------------------


def clearance(registry: Registry, job: str) -> dict:
    """The passing gate record that lets ``job`` be deployed now; raises ``NotCleared`` saying why not.

    It must be for the current validation set, for the artifact now in the bucket, and against the model
    live now. The live model itself needs none (redeploying it restores what serves).
    """
    entry = registry.get(job)
    job = entry["job"]
    live = registry.live()
    data_sha256 = registry.data_manifest_sha256()
    record = registry.gate_record(job, data_sha256) if data_sha256 else None
    if live is not None and live["job"] == job:
        return record or {"candidate": job, "passed": True, "reason": f"{job} is the live model"}
    again = f"judge it with `inv model.gate --candidate {job}`"
    if data_sha256 is None:
        raise NotCleared(f"{job} has no passing gate record: there is no validation set in the bucket to score it on")
    if record is None:
        raise NotCleared(f"{job} has no gate record for the current validation set (data {data_sha256[:12]}): {again}")
    if not record["passed"]:
        raise NotCleared(f"the gate rejected {job} on the current validation set: {record['reason']}")
    current = registry.storage.checksum(entry["artifact_key"])
    if current != record.get("artifact_sha256"):
        raise NotCleared(
            f"the artifact of {job} in the bucket (sha256 {str(current)[:12]}) is not the one the gate "
            f"scored ({str(record.get('artifact_sha256'))[:12]}): {again}"
        )
    live_job = live["job"] if live else None
    if record.get("live") != live_job:
        raise NotCleared(
            f"the gate compared {job} with {record.get('live') or 'no live model'}, "
            f"but {live_job or 'no model'} is live now: {again}"
        )
    return record


def smoke_set_for(registry: Registry, job: str) -> SmokeSet | None:
    """The smoke set of ``job``'s gate record on the current validation set, else of its latest gate record.

    None when the gate never scored ``job``.
    """
    data_sha256 = registry.data_manifest_sha256()
    record = registry.gate_record(job, data_sha256) if data_sha256 else None
    if record is None or not record.get("smoke"):
        with_smoke = [r for r in registry.gate_records(job) if r.get("smoke")]
        record = with_smoke[-1] if with_smoke else None
    return SmokeSet.from_dict(record["smoke"]) if record else None


def serving_line(registry: Registry, job: str) -> str:
    """Which precision ``job`` serves and why, from its gate record on the current validation set
    (the training job's choice when the gate has not scored it)."""
    entry = registry.get(job)
    data_sha256 = registry.data_manifest_sha256()
    record = registry.gate_record(entry["job"], data_sha256) if data_sha256 else None
    precision = (record or {}).get("precision")
    if precision:
        return f"{entry['job']} serves {precision['served']} (gate, on its own scores: {precision['reason']})"
    serving = entry.get("serving") or {}
    return f"{entry['job']} serves {serving.get('precision', FP32)} (training job's choice; the gate has not scored it)"
