"""What the local runtime keeps on disk, and where.

Everything lives under ``<state_dir>/hosting/``:

- ``state.json``: models, endpoint configs and endpoints (with their
  autoscaling policies, instance counts, deployments and scaling activities)
  and the instance processes running now. Only the runtime daemon writes it,
  atomically, after every change; so a new shell reads the same truth;
- ``runtime.json``: the daemon's pid, invocation URL and control socket while it runs;
- ``control.sock``: the control API (models, endpoint configs, deployments,
  status, shutdown), a Unix socket only this user can open (mode 0600);
  invocations go to the TCP port, which serves nothing else;
- ``runtime.log``: the daemon's log (routing, deployments, scaling decisions),
  rotated; ``runtime.out``: what the process wrote outside its log (a crash);
- ``instances/<id>.log``: each model-server process's own log, rotated, and
  ``instances/<id>.out`` its raw output;
- ``models/<version>/``: unpacked artifacts that instances serve.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distracted_driver.fsutil import read_json, write_json_atomic
from distracted_driver.system import unix_socket_path

STATE_VERSION = 1
HISTORY = 20  # deployments kept per endpoint
ACTIVITIES = 50  # scaling activities kept per endpoint


@dataclass(frozen=True)
class RuntimePaths:
    root: Path

    @classmethod
    def under(cls, state_dir: str | Path) -> RuntimePaths:
        return cls(Path(state_dir).resolve() / "hosting")

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def runtime_file(self) -> Path:
        return self.root / "runtime.json"

    @property
    def daemon_lock(self) -> Path:
        return self.root / "runtime.lock"

    @property
    def start_lock(self) -> Path:
        return self.root / "start.lock"

    @property
    def control_socket(self) -> Path:
        return unix_socket_path(self.root / "control.sock")

    @property
    def log_file(self) -> Path:
        return self.root / "runtime.log"

    @property
    def output_file(self) -> Path:
        return self.root / "runtime.out"

    @property
    def instance_logs(self) -> Path:
        return self.root / "instances"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model_dir(self, version: str) -> Path:
        return self.models_dir / version


@dataclass
class ModelRecord:
    """CreateModel: a name (the model version) and the unpacked artifact it serves."""

    name: str
    model_dir: str
    artifact_key: str = ""
    created: float = field(default_factory=time.time)


@dataclass
class VariantConfig:
    """One production variant of an endpoint config."""

    variant_name: str
    model_name: str
    instance_count: int = 1
    weight: float = 1.0
    # The local stand-in for an instance type: ONNX Runtime threads per process.
    instance_threads: int | None = None
    # SageMaker's ContainerStartupHealthCheckTimeoutInSeconds.
    startup_timeout_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.instance_count < 1:
            raise ValueError(f"variant {self.variant_name}: instance_count must be at least 1")
        if self.weight < 0:
            raise ValueError(f"variant {self.variant_name}: weight must not be negative")


@dataclass
class EndpointConfigRecord:
    name: str
    variants: list[VariantConfig]
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.variants = [v if isinstance(v, VariantConfig) else VariantConfig(**v) for v in self.variants]
        names = [v.variant_name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"endpoint config {self.name}: variant names must be present and distinct")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError(f"endpoint config {self.name}: the variant weights sum to zero")

    def variant(self, name: str) -> VariantConfig | None:
        return next((v for v in self.variants if v.variant_name == name), None)


def empty_state() -> dict:
    return {"version": STATE_VERSION, "models": {}, "endpoint_configs": {}, "endpoints": {}, "processes": []}


def load_state(paths: RuntimePaths) -> dict:
    state = read_json(paths.state_file) or empty_state()
    for key, value in empty_state().items():
        state.setdefault(key, value)
    return state


def save_state(paths: RuntimePaths, state: dict) -> None:
    state["updated"] = time.time()
    write_json_atomic(paths.state_file, state)


def to_json(record) -> dict:
    return asdict(record)
