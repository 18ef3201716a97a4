"""The model registry in the bucket and the live-model pointer.

Keys (``registry`` is ``settings.registry_prefix``)::

    registry/models/<job>.json            one entry per trained version: metrics as training reported
                                          them, the precision it serves (fp32/int8) with training's scores of
                                          both, provenance, artifact key and checksum, the gate's own scores
                                          per validation set (``evaluations``), forced deploys
    registry/live.json                    the version serving traffic (written by deploy through ``set_live``)
    registry/gates/<job>/<data>.json      the gate's decision on a version for one validation set
                                          (``data`` is the data manifest's sha256; see ``train.gate``)

The metrics in an entry are what the training job wrote into ``metrics.json``:
information for people, never evidence. The quality gate (``train.gate``) scores
every model itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.model.artifact import ModelArtifact, unpack_artifact
from distracted_driver.storage import KeyNotFound, Storage


class RegistryError(LookupError):
    """No such model version, or nothing registered yet."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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

    def data_manifest_sha256(self) -> str | None:
        """The checksum of the data manifest in the bucket: it names the current validation set."""
        return self.storage.checksum(f"{self.settings.data_prefix}/manifest.json")

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
            "serving": {
                "precision": artifact.served_precision,
                "tolerance": artifact.serving.get("tolerance"),
                "scores": artifact.serving.get("scores", {}),
                "chosen_by": artifact.serving.get("chosen_by"),
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

    # --- gate records and forced deploys -------------------------------------------------------

    def gate_key(self, job: str, data_sha256: str) -> str:
        return f"{self.settings.registry_prefix}/gates/{job}/{data_sha256}.json"

    def save_gate_record(self, record: dict) -> str:
        key = self.gate_key(record["candidate"], record["data_manifest_sha256"])
        self._write(key, record)
        return key

    def gate_record(self, job: str, data_sha256: str) -> dict | None:
        return self._read(self.gate_key(self.resolve(job), data_sha256))

    def gate_records(self, job: str) -> list[dict]:
        """Every gate decision on ``job``, oldest first."""
        prefix = f"{self.settings.registry_prefix}/gates/{self.resolve(job)}/"
        records = [self._read(key) for key in self.storage.list_keys(prefix) if key.endswith(".json")]
        return sorted((r for r in records if r), key=lambda r: r["gated"])

    def record_evaluation(self, job: str, data_sha256: str, scores: dict) -> None:
        """Remember the gate's own scores of ``job`` on a validation set (reused while its artifact is unchanged)."""
        entry = self.get(job)
        entry.setdefault("evaluations", {})[data_sha256] = {**scores, "scored": _now()}
        self._write(self.entry_key(entry["job"]), entry)

    def record_forced_deploy(self, job: str, **info) -> dict:
        """Write into the version's entry that it was deployed with ``--force``, and why it needed it."""
        entry = self.get(job)
        forced = {"at": _now(), **info}
        entry.setdefault("forced_deploys", []).append(forced)
        self._write(self.entry_key(entry["job"]), entry)
        return forced


# --- model.list ------------------------------------------------------------------------------------


def served_scores(entry: dict, data_sha256: str | None) -> tuple[str, dict, str]:
    """(precision served, precision → scores, who scored): the gate's own scores on the current validation set
    when it has scored this version, else the training job's."""
    evaluation = (entry.get("evaluations") or {}).get(data_sha256) if data_sha256 else None
    if evaluation and evaluation.get("by_precision"):
        return evaluation.get("precision", "fp32"), evaluation["by_precision"], "gate"
    serving = entry.get("serving") or {}
    if serving.get("scores"):
        return serving.get("precision", "fp32"), serving["scores"], "training"
    metrics = entry.get("metrics", {})
    return "fp32", {"fp32": {"log_loss": metrics.get("log_loss"), "accuracy": metrics.get("accuracy")}}, "training"


def version_listing(registry: Registry, as_json: bool = False) -> str:
    """``inv model.list``: every registered version, as a table (``version_rows``) or as JSON with a live flag."""
    versions, live = registry.list_versions(), registry.live()
    live_job = live["job"] if live else None
    if as_json:
        return json.dumps([{**v, "live": v["job"] == live_job} for v in versions], indent=2)
    if not versions:
        return "no model versions yet (inv train.run)"
    return "\n".join(version_rows(versions, live_job, registry.data_manifest_sha256()))


def version_rows(versions: list[dict], live_job: str | None, data_sha256: str | None) -> list[str]:
    """``inv model.list``: one line per version, * on the live one."""

    def loss(scores: dict, precision: str) -> str:
        value = scores.get(precision, {}).get("log_loss")
        return "-" if value is None else f"{value:.4f}"

    rows = [
        f"  {'job':<26} {'created':<26} {'serves':<6} {'fp32 loss':>9} {'int8 loss':>9} {'accuracy':>8}  "
        f"{'scored by':<9} mode"
    ]
    for entry in versions:
        precision, scores, scorer = served_scores(entry, data_sha256)
        accuracy = scores.get(precision, {}).get("accuracy")
        rows.append(
            f"{'*' if entry['job'] == live_job else ' '} {entry['job']:<26} {entry['created']:<26} "
            f"{precision:<6} {loss(scores, 'fp32'):>9} {loss(scores, 'int8'):>9} "
            f"{'-' if accuracy is None else f'{accuracy:.3f}':>8}  {scorer:<9} "
            f"{entry.get('metrics', {}).get('mode') or '-'}"
        )
    return rows
