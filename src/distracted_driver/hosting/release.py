"""Putting a judged model into service, and proving that the endpoint answers what the gate scored.

``release`` is what ``inv deploy.swap`` and ``inv deploy.create`` run, on either backend:

1. clearance: the model needs a passing gate record for the current validation set
   (``train.gate.clearance``). ``force`` deploys without one, and the override, with the reason it
   was needed, is written into the model's registry entry;
2. the blue/green deploy through the ``Hosting`` interface (the local runtime or SageMaker);
3. the smoke test (``verify_endpoint``): the gate's smoke images go through the endpoint with
   ``Hosting.invoke``; every probability must match what the gate computed offline within
   ``SMOKE_TOLERANCE``, and the accuracy on them must not fall below the gate's. Anything else
   rolls back to the previous model.

The pipeline's deploy and smoke stages use the same pieces.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from distracted_driver.config import Settings
from distracted_driver.data.layout import CLASSES
from distracted_driver.hosting.base import (
    AlarmThresholds,
    DeployResult,
    Hosting,
    HostingError,
    ModelSpec,
    TrafficRouting,
)
from distracted_driver.hosting.smoke import content_type
from distracted_driver.model.artifact import probability_problem
from distracted_driver.model.registry import Registry
from distracted_driver.storage import Storage, open_storage
from distracted_driver.train.gate import (
    SMOKE_TOLERANCE,
    GateError,
    NotCleared,
    SmokeSet,
    clearance,
    judge,
    smoke_set_for,
)

EXAMPLES_IN_REASON = 3


@dataclass
class SmokeCheck:
    """What the endpoint answered for the smoke set, against what the gate computed offline."""

    requests: int = 0
    problems: list[str] = field(default_factory=list)
    max_difference: float | None = None  # largest |served - evaluated| over every probability answered
    accuracy: float | None = None  # on the images that were answered with probabilities
    expected_accuracy: float = 0.0
    tolerance: float = SMOKE_TOLERANCE
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.passed:
            return "; ".join(self.problems[:EXAMPLES_IN_REASON]) + (
                f" (and {len(self.problems) - EXAMPLES_IN_REASON} more)"
                if len(self.problems) > EXAMPLES_IN_REASON
                else ""
            )
        return (
            f"{self.requests} smoke images answered as evaluated: largest probability difference "
            f"{self.max_difference:.2g} (tolerance {self.tolerance:g}), accuracy {self.accuracy:.3f} "
            f"(gate {self.expected_accuracy:.3f})"
        )


def verify_endpoint(hosting: Hosting, smoke: SmokeSet, tolerance: float = SMOKE_TOLERANCE) -> SmokeCheck:
    """Send every smoke image through the endpoint and compare the answers with the gate's."""
    started = time.perf_counter()
    check = SmokeCheck(expected_accuracy=smoke.accuracy, tolerance=tolerance)
    differences, correct, answered, far = [], 0, 0, []
    for image, label, expected, source in zip(smoke.images, smoke.labels, smoke.probabilities, smoke.sources):
        check.requests += 1
        try:
            body, _ = hosting.invoke(image, content_type(image))
            served = json.loads(body)
        except Exception as error:  # noqa: BLE001 - every failed request is the finding
            check.problems.append(f"smoke image {source}: the endpoint request failed: {type(error).__name__}: {error}")
            continue
        problem = probability_problem([served]) if isinstance(served, list) else "the answer is not a JSON list"
        if problem is not None:
            check.problems.append(f"smoke image {source}: {problem}")
            continue
        served = np.asarray(served, dtype=np.float64)
        difference = float(np.abs(served - np.asarray(expected)).max())
        differences.append(difference)
        answered += 1
        correct += int(served.argmax() == label)
        if difference > tolerance:
            far.append(f"{source} (true {CLASSES[label]}): served {_top(served)}, evaluated {_top(expected)}")
    if differences:
        check.max_difference = max(differences)
        check.accuracy = correct / answered
    if far:
        check.problems.insert(
            0,
            (
                f"serving differs from evaluation: {len(far)} of {len(smoke)} smoke images answered with probabilities "
                f"up to {check.max_difference:.3f} away from the gate's (tolerance {tolerance:g}), e.g. {far[0]}"
            ),
        )
    if check.accuracy is not None and check.accuracy < smoke.accuracy:
        check.problems.append(
            f"accuracy on the smoke images is {check.accuracy:.3f} served, below the gate's {smoke.accuracy:.3f}"
        )
    check.seconds = round(time.perf_counter() - started, 3)
    return check


def _top(probabilities) -> str:
    best = int(np.argmax(probabilities))
    return f"{CLASSES[best]} {float(probabilities[best]):.2f}"


# --- release: clearance, deploy, smoke test, rollback ---------------------------------------------


@dataclass
class Release:
    result: DeployResult
    smoke: SmokeCheck | None = None
    forced: dict | None = None  # what was written into the registry entry when --force was needed
    notes: list[str] = field(default_factory=list)

    def report_lines(self) -> list[str]:
        lines = [f"  note: {note}" for note in self.notes]
        if self.smoke is not None:
            lines.append(f"  smoke test: {self.smoke.summary()}")
        return lines + self.result.report_lines()


def release(
    settings: Settings,
    hosting: Hosting,
    job: str,
    routing: TrafficRouting = TrafficRouting(),
    alarms: AlarmThresholds = AlarmThresholds(),
    *,
    instances: int = 1,
    capture_percent: int | None = None,
    force: bool = False,
    new_endpoint: bool = False,
    by: str = "",
    storage: Storage | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Release:
    """Deploy a registered model if the gate cleared it (or ``force``), then smoke-test it; roll back on failure.

    ``capture_percent`` sets the endpoint's data capture once the model is live (None: as it is).

    Raises ``NotCleared`` (nothing deployed) when the model has no passing gate record and ``force`` is off,
    and ``HostingError`` when ``new_endpoint`` is asked for and the endpoint exists.
    """
    if new_endpoint and hosting.status().live_version:
        raise HostingError(f"endpoint {settings.endpoint_name} exists already; update it with inv deploy.swap")
    registry = Registry(storage or open_storage(settings), settings)
    entry = registry.get(job)
    job = entry["job"]
    notes, forced = [], None
    try:
        clearance(registry, job)
    except NotCleared as refusal:
        if not force:
            raise
        forced = _force(registry, job, str(refusal), by, notes, log)
    smoke = smoke_set_for(registry, job)
    if smoke is None:
        notes.append(f"no smoke set: the gate never scored {job}, so the endpoint's answers cannot be compared")
    result = hosting.deploy(
        ModelSpec(job, entry["artifact_key"], instances), routing, alarms, capture_percent=capture_percent
    )
    done = Release(result, None, forced, notes)
    if result.outcome != "deployed" or smoke is None:
        return done
    log(f"smoke test: {len(smoke)} validation images through the endpoint")
    done.smoke = check = verify_endpoint(hosting, smoke)
    result.timings["smoke"] = check.seconds
    if check.passed:
        return done
    done.result = _roll_back(hosting, job, check, result)
    return done


def _force(registry: Registry, job: str, refusal: str, by: str, notes: list[str], log) -> dict:
    """Write the override into the model's entry; score the model first if the gate never did (for the smoke set)."""
    if registry.data_manifest_sha256() and not registry.gate_records(job):
        log(f"--force: the gate never scored {job}; scoring it now for the record and the smoke set")
        try:
            decision = judge(registry, job)
            notes.append(
                f"gate (overridden by --force): {'passed' if decision.passed else 'rejected'}: {decision.reason}"
            )
        except GateError as error:
            notes.append(f"the gate could not score {job}: {error}")
    forced = registry.record_forced_deploy(job, refused=refusal, by=by or "deploy --force")
    notes.append(f"deployed with --force over: {refusal}")
    return forced


def _roll_back(hosting: Hosting, job: str, check: SmokeCheck, deployed: DeployResult) -> DeployResult:
    reason = f"smoke test of {job} failed: {check.summary()}"
    try:
        back = hosting.rollback()
    except Exception as error:  # noqa: BLE001 - e.g. a new endpoint has nothing earlier to go back to
        return DeployResult(
            "failed",
            deployed.endpoint,
            job,
            f"{reason}; the rollback failed too ({error}): {job} still serves, take it down with `inv deploy.down`",
            deployed.timings,
        )
    if back.outcome not in ("rolled-back", "deployed"):
        return DeployResult(
            "failed",
            deployed.endpoint,
            back.live_version,
            f"{reason}; the rollback ended {back.outcome}: {back.reason}",
            deployed.timings,
        )
    return DeployResult(
        "rolled-back",
        deployed.endpoint,
        back.live_version,
        f"{reason}; rolled back to {back.live_version}",
        {**deployed.timings, **back.timings},
    )
