"""Run records and the stage cache, both kept in the bucket.

``pipeline/runs/<run-id>.json`` holds one run: its options, each stage's
inputs (and their hash), outputs, status and wall time, and the outcome. While
the run goes on it is rewritten (atomically: a temp-and-rename locally, a
single PUT on S3) after every stage, so a run killed at any point leaves a
record that says which stage was running and what the finished ones produced.
Once closed (``finished`` set: by the run itself, or by the next run when it
was killed) a record is never written again: history is append-only, and
``--resume`` starts a new record that names the run it continues
(``resumes``).

``pipeline/cache/<stage>/<input-hash>.json`` maps a stage's input hash to the
outputs it produced the last time it finished. That is what makes a run
idempotent by content: a stage whose inputs hash to a cached entry (and whose
outputs are still where the entry says) is reused instead of run.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from distracted_driver.config import Settings
from distracted_driver.hashing import sha256_json
from distracted_driver.pipeline.outcomes import STAGES, exit_code
from distracted_driver.storage import KeyNotFound, Storage

# Stage statuses.
PENDING = "pending"
RUNNING = "running"
DONE = "done"  # the stage did its work in this run
REUSED = "reused"  # same inputs as a finished earlier stage; its outputs taken over
SKIPPED = "skipped"  # not needed in this run (the reason says why)
FAILED = "failed"
FINISHED = (DONE, REUSED, SKIPPED)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    """``YYYYMMDD-HHMMSS-mmm-<4 hex>``: unique, and sortable by start time to the millisecond.

    The milliseconds matter: runs that fail fast, and the resume that follows, start within one
    second, and the latest run is the last id in sorted order.
    """
    now = datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


@dataclass
class StageRecord:
    name: str
    status: str = PENDING
    inputs: dict = field(default_factory=dict)
    input_hash: str = ""
    outputs: dict = field(default_factory=dict)
    seconds: float = 0.0
    started: str = ""
    reason: str = ""
    source_run: str = ""  # for a reused stage: the run that did the work
    attempts: int = 0  # times the stage's work was started in this run

    @staticmethod
    def hash_inputs(inputs: dict) -> str:
        return sha256_json(inputs)


@dataclass
class RunRecord:
    run_id: str
    backend: str
    options: dict
    started: str = field(default_factory=now_iso)
    finished: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    outcome: str = ""  # empty while the run is in progress (or was killed)
    reason: str = ""
    raw_manifest: str = ""  # id of the raw-data manifest the run converted from
    model_version: str = ""  # the candidate this run trained or reused
    live_before: str = ""
    live_after: str = ""
    resumes: str = ""  # with --resume: the interrupted or failed run this one continues
    stages: list[StageRecord] = field(default_factory=lambda: [StageRecord(name) for name in STAGES])

    @property
    def exit_code(self) -> int:
        return exit_code(self.outcome)

    @property
    def total_seconds(self) -> float:
        return round(sum(stage.seconds for stage in self.stages), 3)

    def stage(self, name: str) -> StageRecord:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def to_dict(self) -> dict:
        value = asdict(self)
        value["exit_code"] = self.exit_code
        value["total_seconds"] = self.total_seconds
        return value

    @classmethod
    def from_dict(cls, value: dict) -> RunRecord:
        value = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        stages = [
            StageRecord(**{k: v for k, v in s.items() if k in StageRecord.__dataclass_fields__})
            for s in value.pop("stages", [])
        ]
        record = cls(**value)
        if stages:
            record.stages = stages
        return record


class RecordClosed(RuntimeError):
    """A write to a run record that is closed: records are append-only."""


class RunStore:
    """Run records and stage cache entries in the bucket."""

    def __init__(self, storage: Storage, settings: Settings):
        self.storage = storage
        self.prefix = settings.pipeline_prefix.strip("/")

    def run_key(self, run_id: str) -> str:
        return f"{self.prefix}/runs/{run_id}.json"

    def cache_key(self, stage: str, input_hash: str) -> str:
        return f"{self.prefix}/cache/{stage}/{input_hash}.json"

    def save(self, record: RunRecord) -> None:
        """Write a run's record; a record already closed is never written again (``RecordClosed``)."""
        key = self.run_key(record.run_id)
        try:
            stored = json.loads(self.storage.get_bytes(key))
        except KeyNotFound:
            stored = None
        if stored and stored.get("finished"):
            raise RecordClosed(f"run {record.run_id} is closed ({stored.get('outcome')}); its record stays as it is")
        self.storage.put_bytes(key, _dump(record.to_dict()))

    def load(self, run_id: str) -> RunRecord:
        return RunRecord.from_dict(json.loads(self.storage.get_bytes(self.run_key(run_id))))

    def run_ids(self) -> list[str]:
        """Every recorded run id, oldest first."""
        start = len(f"{self.prefix}/runs/")
        return [
            key[start : -len(".json")]
            for key in self.storage.list_keys(f"{self.prefix}/runs/")
            if key.endswith(".json")
        ]

    def history(self, limit: int | None = None) -> list[RunRecord]:
        """Run records, oldest first (the last ``limit`` of them when given)."""
        ids = self.run_ids()
        if limit:
            ids = ids[-limit:]
        records = []
        for run_id in ids:
            try:
                records.append(self.load(run_id))
            except (KeyNotFound, ValueError):  # deleted meanwhile, or not ours
                continue
        return records

    def latest(self) -> RunRecord | None:
        ids = self.run_ids()
        return self.load(ids[-1]) if ids else None

    def remember(self, stage: StageRecord, run_id: str) -> None:
        """Cache a finished stage's outputs under its input hash."""
        entry = {
            "stage": stage.name,
            "inputs": stage.inputs,
            "outputs": stage.outputs,
            "run_id": run_id,
            "finished": now_iso(),
        }
        self.storage.put_bytes(self.cache_key(stage.name, stage.input_hash), _dump(entry))

    def recall(self, stage: str, input_hash: str) -> dict | None:
        """The cache entry for these inputs, or None."""
        try:
            return json.loads(self.storage.get_bytes(self.cache_key(stage, input_hash)))
        except KeyNotFound:
            return None


def _dump(value: dict) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
