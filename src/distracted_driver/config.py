"""The one settings object.

Every path and name the pipeline uses comes from here. Defaults make the
local backend work from the repository root with no configuration; each
field can be overridden by an environment variable ``DD_<FIELD>`` (upper
case), which is how CI and the aws backend set them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("local", "aws")
# DD_INT8_TOLERANCE's default; model.precision's rule serves int8 within it.
DEFAULT_INT8_TOLERANCE = "0.01,3%"


class ToleranceError(ValueError):
    """The tolerance setting cannot be read."""


@dataclass(frozen=True)
class Tolerance:
    """How much worse than fp32's validation log loss int8's may be and still be served."""

    absolute: float | None = None
    relative: float | None = None  # a fraction of fp32's log loss

    @classmethod
    def parse(cls, text: str | float | None) -> Tolerance:
        """``"0.01,3%"`` → absolute 0.01, relative 0.03; ``"0"``; ``"-1"``; ``"5%"``. None: the default."""
        text = DEFAULT_INT8_TOLERANCE if text is None else str(text)
        absolute = relative = None
        terms = [term.strip() for term in text.split(",")]
        for term in terms:
            is_relative = term.endswith("%")
            try:
                value = float(term[:-1] if is_relative else term)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ToleranceError(
                    f"int8 tolerance {text!r}: {term!r} is not a number or a percentage (write e.g. 0.01,3%)"
                )
            if is_relative:
                if relative is not None:
                    raise ToleranceError(f"int8 tolerance {text!r} gives two relative terms")
                relative = value / 100.0
            else:
                if absolute is not None:
                    raise ToleranceError(f"int8 tolerance {text!r} gives two absolute terms")
                absolute = value
        return cls(absolute, relative)

    def allowance(self, fp32_log_loss: float) -> float:
        terms = []
        if self.absolute is not None:
            terms.append(self.absolute)
        if self.relative is not None:
            terms.append(self.relative * fp32_log_loss)
        return max(terms)

    def limit(self, fp32_log_loss: float) -> float:
        """The largest int8 log loss that is still served."""
        return fp32_log_loss + self.allowance(fp32_log_loss)

    def __str__(self) -> str:
        terms = []
        if self.absolute is not None:
            terms.append(f"{self.absolute:g}")
        if self.relative is not None:
            terms.append(f"{self.relative * 100:g}%")
        return ",".join(terms)


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
    kms_key_id: str = ""  # SSE-KMS key for the buckets (empty: SSE-S3)
    serving_image: str = ""  # ECR image of our model server (Terraform output)
    serving_instance_type: str = "ml.c5.large"
    training_instance_type: str = "ml.m5.xlarge"  # script mode; the built-in algorithm needs a GPU type
    # Key prefixes inside the bucket (the same on S3 and locally).
    data_prefix: str = "data"
    raw_prefix: str = "raw"
    models_prefix: str = "models"
    registry_prefix: str = "registry"
    pipeline_prefix: str = "pipeline"
    transform_prefix: str = "transform"  # Batch Transform: images to score, each job's manifest and outputs
    capture_prefix: str = "capture"  # data capture: <prefix>/<endpoint>/<variant>/yyyy/mm/dd/hh/*.jsonl
    # Serving precision: int8 is served when its validation log loss is within this of fp32's
    # (model.precision: "0.01,3%" = 0.01 or 3 %, whichever is larger; negative: always fp32).
    int8_tolerance: str = DEFAULT_INT8_TOLERANCE
    # Hosting.
    endpoint_name: str = "distracted-driver"
    variant_name: str = "AllTraffic"
    # Share of invocations captured (0..100; 0 = off). None: a new endpoint captures nothing, and a
    # swap keeps what the endpoint captures now.
    capture_percent: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        try:
            object.__setattr__(self, "int8_tolerance", str(Tolerance.parse(self.int8_tolerance)))
        except ToleranceError as error:
            raise ValueError(f"DD_INT8_TOLERANCE: {error}") from None
        root = Path(self.root)
        object.__setattr__(self, "root", root)
        for name, default in (("bucket_dir", ".bucket"), ("state_dir", ".state"), ("work_dir", ".work")):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value) if value else root / default)
        object.__setattr__(self, "capture_percent", parse_percent(self.capture_percent, "DD_CAPTURE_PERCENT"))

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Settings from ``DD_*`` environment variables, then explicit overrides."""
        values = {}
        environ = dict(os.environ)
        if (overrides.get("backend") or environ.get("DD_BACKEND")) == "aws":
            # `inv infra.outputs` writes Terraform's outputs there; the environment wins.
            environ = {**read_env_file(_aws_env_path(environ)), **environ}
        for f in dataclasses.fields(cls):
            env = environ.get(f"DD_{f.name.upper()}")
            if env is not None:
                values[f.name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def parse_percent(value, flag: str = "--capture-percent") -> int | None:
    """A sampling percentage from a flag or the environment: a whole number within 0..100 (None stays None)."""
    if value is None or value == "":
        return None
    try:
        percent = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{flag} takes a whole number within 0..100, not {value!r}") from None
    if not 0 <= percent <= 100:
        raise ValueError(f"{flag} takes a whole number within 0..100, not {percent}")
    return percent


def dataclass_from_toml(cls, path: str | Path, table: str, what: str):
    """``cls`` (a dataclass of limits) from the ``[table]`` of the TOML file at ``path``, defaults for what it
    leaves out; a key ``cls`` lacks is an error naming ``what`` (a misspelt limit must not go unnoticed)."""
    with open(path, "rb") as handle:
        values = tomllib.load(handle).get(table, {})
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{path}: unknown {what} {sorted(unknown)}")
    return cls(**values)


def _aws_env_path(environ: dict) -> Path:
    root = Path(environ.get("DD_ROOT", Path.cwd()))
    return Path(environ.get("DD_STATE_DIR") or root / ".state") / "aws.env"


def read_env_file(path: str | Path) -> dict[str, str]:
    """``NAME=value`` lines (``#`` comments, blank lines ignored); {} when the file is absent."""
    values = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return values
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values
