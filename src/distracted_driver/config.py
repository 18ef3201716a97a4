"""The one settings object.

Every path and name the pipeline uses comes from here. Defaults make the
local backend work from the repository root with no configuration; each
field can be overridden by an environment variable ``DD_<FIELD>`` (upper
case), which is how CI and the aws backend set them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("local", "aws")


def _repo_root() -> Path:
    return Path(os.environ.get("DD_ROOT", Path.cwd())).resolve()


@dataclass(frozen=True)
class Settings:
    backend: str = "local"
    root: Path = field(default_factory=_repo_root)
    # Local backend: the bucket is a directory, hosting state another.
    bucket_dir: Path | None = None
    state_dir: Path | None = None
    work_dir: Path | None = None
    # AWS backend.
    bucket: str = "distracted-driver-data"
    region: str = "us-east-1"
    role_arn: str = ""
    # Key prefixes inside the bucket (the same on S3 and locally).
    data_prefix: str = "data"
    raw_prefix: str = "raw"
    models_prefix: str = "models"
    registry_prefix: str = "registry"
    pipeline_prefix: str = "pipeline"
    # Hosting.
    endpoint_name: str = "distracted-driver"
    variant_name: str = "AllTraffic"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        root = Path(self.root)
        object.__setattr__(self, "root", root)
        for name, default in (("bucket_dir", ".bucket"), ("state_dir", ".state"), ("work_dir", ".work")):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value) if value else root / default)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Settings from ``DD_*`` environment variables, then explicit overrides."""
        values = {}
        for f in dataclasses.fields(cls):
            env = os.environ.get(f"DD_{f.name.upper()}")
            if env is not None:
                values[f.name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
