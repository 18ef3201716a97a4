"""Which numeric precision an artifact serves: int8 only when it scores within a tolerance of fp32.

Every artifact holds the fp32 model; a trained one also holds a statically
quantized int8 copy (``train.export.quantize_int8``). The rule that picks the
served one is here, and only here: the training job applies it to its own
validation scores when it writes the artifact (``serving.json``), and the gate
applies it again to the scores it computes itself, so an artifact that serves
int8 on numbers the gate cannot reproduce is rejected.

The tolerance is one setting, ``DD_INT8_TOLERANCE`` (``Settings.int8_tolerance``, read by ``config.Tolerance``):
comma-separated terms, a plain number an absolute allowance of log loss, a
number followed by ``%`` one relative to fp32's log loss; the largest term is the
allowance. The default ``0.01,3%`` lets int8 be worse by 0.01 or by 3 %, whichever
is larger. ``0`` serves int8 only when it is no worse than fp32; a negative
number never serves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from distracted_driver.config import Tolerance

FP32 = "fp32"
INT8 = "int8"
PRECISIONS = (FP32, INT8)


@dataclass(frozen=True)
class Choice:
    """The precision the rule picks, the limit it applied and why, in one sentence."""

    precision: str
    limit: float | None
    reason: str

    def to_dict(self) -> dict:
        return {"precision": self.precision, "limit": self.limit, "reason": self.reason}


def choose(fp32_log_loss: float, int8_log_loss: float | None, tolerance: Tolerance, int8_problem: str = "") -> Choice:
    """int8 when its log loss is at most ``tolerance.limit(fp32)``; fp32 otherwise or when there is no int8 score.

    ``int8_problem`` says why there is no int8 score (no int8 model, outputs that are not probabilities).
    """
    if int8_log_loss is None:
        return Choice(FP32, None, f"fp32: {int8_problem or 'the artifact has no int8 model'}")
    limit = tolerance.limit(fp32_log_loss)
    within = int8_log_loss <= limit
    return Choice(
        INT8 if within else FP32,
        limit,
        (
            f"{INT8 if within else FP32}: int8 log loss {int8_log_loss:.4f} is {'within' if within else 'above'} "
            f"the limit {limit:.4f} (fp32 {fp32_log_loss:.4f}, tolerance {tolerance})"
        ),
    )


def serving_record(choice: Choice, tolerance: Tolerance, scores: dict[str, dict], **extra) -> dict:
    """What ``serving.json`` (and a gate record) keeps of a choice: the precision, the rule's numbers and every score."""
    return {
        "precision": choice.precision,
        "tolerance": str(tolerance),
        "limit": choice.limit,
        "reason": choice.reason,
        "scores": scores,
        **extra,
    }


def choose_from_scores(scores: dict[str, dict], tolerance: Tolerance) -> Choice:
    """``choose`` over headline scores as ``evaluate.precision_summary`` gives them (precision → log loss or problem)."""
    fp32, int8 = scores[FP32], scores.get(INT8)
    if int8 is None:
        return choose(fp32["log_loss"], None, tolerance)
    return choose(fp32["log_loss"], int8.get("log_loss"), tolerance, int8.get("problem", ""))


def with_tolerance(hyperparameters: dict | None, tolerance: str) -> dict:
    """The training job's hyperparameters with ``int8-tolerance`` from the setting, unless they name it already."""
    hyperparameters = dict(hyperparameters or {})
    if not any(str(key).replace("_", "-") == "int8-tolerance" for key in hyperparameters):
        hyperparameters["int8-tolerance"] = tolerance
    return hyperparameters
