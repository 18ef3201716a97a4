"""The model registry in the bucket, the live-model pointer, and the quality gate.

Keys (``registry`` is ``settings.registry_prefix``)::

    registry/models/<job>.json   one entry per trained version: metrics, provenance, artifact key
    registry/live.json           the version serving traffic (written by deploy through ``set_live``)

The gate compares a candidate's validation log loss with the live model's. Log
losses are only comparable on the same validation images, so when the two were
trained on different data and the bucket still holds the candidate's data, the
live model is re-evaluated on the candidate's validation channel first (with
ONNX Runtime; the result is remembered in the live entry).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.data.layout import CLASSES
from distracted_driver.storage import KeyNotFound, Storage
from distracted_driver.train.artifact import ModelArtifact, unpack_artifact

# A candidate may be worse than the live model by at most this much validation log loss.
DEFAULT_TOLERANCE = 0.05
# The first model must reach this fraction of ln(10), the log loss of a uniform guess.
DEFAULT_BASELINE_FRACTION = 0.5
UNIFORM_LOG_LOSS = math.log(len(CLASSES))


class RegistryError(LookupError):
    """No such model version, or nothing registered yet."""


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    candidate_log_loss: float | None
    live_log_loss: float | None
    candidate: str = ""
    live: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, storage: Storage, settings: Settings):
        self.storage = storage
        self.settings = settings

    # --- keys ---------------------------------------------------------------

    def entry_key(self, job: str) -> str:
        return f"{self.settings.registry_prefix}/models/{job}.json"

    @property
    def live_key(self) -> str:
        return f"{self.settings.registry_prefix}/live.json"

    def artifact_key(self, job: str) -> str:
        return f"{self.settings.models_prefix}/{job}/output/model.tar.gz"

    def _read(self, key: str) -> dict | None:
        try:
            return json.loads(self.storage.get_bytes(key))
        except KeyNotFound:
            return None

    def _write(self, key: str, value: dict) -> None:
        self.storage.put_bytes(key, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    # --- versions -----------------------------------------------------------

    def register(self, job: str, artifact: ModelArtifact, **extra) -> dict:
        """Record a trained version; its ``model.tar.gz`` must already be in the bucket.

        ``extra`` fields (e.g. ``algorithm="script"``) are stored in the entry as given.
        """
        key = self.artifact_key(job)
        checksum = self.storage.checksum(key)
        if checksum is None:
            raise RegistryError(f"cannot register {job}: {self.storage.uri(key)} does not exist")
        metrics = artifact.metrics
        provenance = artifact.provenance
        entry = {
            "job": job,
            "created": _now(),
            "artifact_key": key,
            "artifact_sha256": checksum,
            "metrics": {
                "log_loss": metrics["log_loss"],
                "accuracy": metrics["accuracy"],
                "examples": metrics.get("examples"),
                "recall": {name: value["recall"] for name, value in metrics.get("per_class", {}).items()},
                "mode": metrics.get("mode"),
                "best_epoch": metrics.get("best_epoch"),
            },
            "data_manifest_sha256": provenance.get("data_manifest_sha256"),
            "code_version": provenance.get("code_version"),
            "hyperparameters": provenance.get("hyperparameters", {}),
            "timings": provenance.get("timings", {}),
            "evaluations": {},
            **extra,
        }
        self._write(self.entry_key(job), entry)
        return entry

    def list_versions(self) -> list[dict]:
        """Every registered version, oldest first (job names sort by time)."""
        prefix = f"{self.settings.registry_prefix}/models/"
        entries = [self._read(key) for key in self.storage.list_keys(prefix) if key.endswith(".json")]
        return sorted((e for e in entries if e), key=lambda e: e["job"])

    def get(self, job: str) -> dict:
        """A version's entry; ``latest`` and ``live`` name the newest and the deployed one."""
        job = self.resolve(job)
        entry = self._read(self.entry_key(job))
        if entry is None:
            raise RegistryError(f"no registered model version {job!r}")
        return entry

    def resolve(self, job: str) -> str:
        if job == "latest":
            versions = self.list_versions()
            if not versions:
                raise RegistryError("no model version is registered yet; train one with `inv train.run`")
            return versions[-1]["job"]
        if job == "live":
            live = self.live()
            if live is None:
                raise RegistryError("no model is live yet")
            return live["job"]
        return job

    def fetch_artifact(self, job: str, directory: str | Path) -> ModelArtifact:
        """Download and unpack a version's ``model.tar.gz`` into ``directory``."""
        job = self.resolve(job)
        directory = Path(directory)
        tar = directory / "model.tar.gz"
        try:
            self.storage.get_file(self.artifact_key(job), tar)
        except KeyNotFound:
            raise RegistryError(f"model version {job!r} has no artifact at {self.artifact_key(job)}") from None
        return unpack_artifact(tar, directory / "model")

    # --- live pointer ---------------------------------------------------------

    def live(self) -> dict | None:
        return self._read(self.live_key)

    def set_live(self, job: str, **info) -> dict:
        """Record ``job`` as the version serving traffic (deploy calls this after a successful swap)."""
        entry = self.get(job)
        live = {"job": entry["job"], "since": _now(), **info}
        self._write(self.live_key, live)
        return live

    # --- the gate -------------------------------------------------------------

    def gate(
        self,
        candidate_job: str,
        tolerance: float = DEFAULT_TOLERANCE,
        baseline_fraction: float = DEFAULT_BASELINE_FRACTION,
    ) -> GateDecision:
        """May the candidate replace the live model? The reason says why or why not."""
        candidate = self.get(candidate_job)
        job = candidate["job"]
        loss = candidate["metrics"]["log_loss"]
        live = self.live()
        if live is None:
            threshold = baseline_fraction * UNIFORM_LOG_LOSS
            passed = loss < threshold
            reason = (f"no live model: {job} has validation log loss {loss:.4f}, "
                      f"{'below' if passed else 'not below'} {threshold:.4f} "
                      f"({baseline_fraction:g} x ln 10, the uniform guess's log loss)")
            return GateDecision(passed, reason, loss, None, job, None)
        if live["job"] == job:
            return GateDecision(True, f"{job} is already the live model", loss, loss, job, job)
        live_loss, basis = self._live_log_loss(live["job"], candidate)
        limit = live_loss + tolerance
        passed = loss <= limit
        verdict = "within" if passed else "worse than"
        reason = (f"{job} has validation log loss {loss:.4f}; live {live['job']} has {live_loss:.4f} {basis}; "
                  f"{verdict} the tolerance of {tolerance:g} (limit {limit:.4f})")
        return GateDecision(passed, reason, loss, live_loss, job, live["job"])

    def _live_log_loss(self, live_job: str, candidate: dict) -> tuple[float, str]:
        """The live model's log loss on the candidate's validation data when that can be had."""
        live = self.get(live_job)
        data = candidate.get("data_manifest_sha256")
        if data is None or live.get("data_manifest_sha256") == data:
            return live["metrics"]["log_loss"], "on the same validation data"
        if data in live.get("evaluations", {}):
            return live["evaluations"][data]["log_loss"], "re-evaluated on the candidate's validation data"
        manifest_key = f"{self.settings.data_prefix}/manifest.json"
        if self.storage.checksum(manifest_key) != data:
            return live["metrics"]["log_loss"], ("as recorded on its own validation data "
                                                 "(the candidate's data is no longer in the bucket)")
        metrics = self._evaluate(live_job)
        live.setdefault("evaluations", {})[data] = {
            "log_loss": metrics["log_loss"], "accuracy": metrics["accuracy"], "evaluated": _now()}
        self._write(self.entry_key(live_job), live)
        return metrics["log_loss"], "re-evaluated on the candidate's validation data"

    def _evaluate(self, job: str) -> dict:
        from distracted_driver.train.evaluate import evaluate_artifact

        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.settings.work_dir, prefix="gate-") as tmp:
            artifact = self.fetch_artifact(job, Path(tmp) / "artifact")
            channel = Path(tmp) / "validation"
            self.storage.download_prefix(f"{self.settings.data_prefix}/validation", channel)
            return evaluate_artifact(artifact, channel, progress=False)
