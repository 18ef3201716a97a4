"""What a pipeline run may be told: everything here is part of some stage's inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from distracted_driver.config import parse_percent
from distracted_driver.hosting import STRATEGIES


@dataclass(frozen=True)
class RunOptions:
    # Training hyperparameters given explicitly; the training script's defaults fill the rest.
    hyperparameters: dict = field(default_factory=dict)
    # Options of the split + convert step (validation fraction, resize, quality, seed, ...).
    convert: dict = field(default_factory=dict)
    # SageMaker training algorithm on the aws backend: "script" (our scripts/train.py) or "builtin".
    algorithm: str = "script"
    # Gate: how much worse than the live model's log loss a candidate may be (None: the registry's default).
    gate_tolerance: float | None = None
    # Blue/green deployment.
    strategy: str = "canary"
    canary_percent: int = 10
    linear_step_percent: int = 25
    wait_seconds: float = 10.0
    bake_seconds: float = 10.0
    # Alarms on the green fleet during the swap; a breach rolls traffic back to blue.
    alarm_max_error_rate: float = 0.05
    alarm_max_p99_ms: float = 2000.0
    # Data capture: share of invocations the endpoint captures once the candidate is live (0..100; 0 = off).
    # None keeps what the endpoint captures now (nothing, for a new endpoint; DD_CAPTURE_PERCENT overrides).
    capture_percent: int | None = None
    # Verification after a deploy: the gate keeps this many validation images per class as the smoke set,
    # which the endpoint must answer as the gate scored them; then a bounded load test (0 s: none).
    smoke_images: int = 2
    load_users: int = 4
    load_spawn_rate: float = 4.0
    load_seconds: float = 15.0
    # The REST API to smoke-test and load (default: the local gateway when it runs; the API stage URL on aws).
    api_url: str | None = None
    # Continue the latest interrupted or failed run instead of starting a new one.
    resume: bool = False
    lock_max_age_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.load_seconds < 0 or self.load_users < 1:
            raise ValueError("load test: seconds must be >= 0 and users >= 1")
        object.__setattr__(self, "capture_percent", parse_percent(self.capture_percent))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> RunOptions:
        return cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})


def parse_key_values(text: str | None) -> dict[str, str]:
    """``"dropout=0.3,weight-decay=1e-4"`` → ``{"dropout": "0.3", "weight-decay": "1e-4"}``."""
    values = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, not {item!r}")
        values[key.strip()] = value.strip()
    return values


# The flags ``inv pipeline.run`` and ``inv pipeline.watch`` share: name -> (default, help). None and "" leave
# the option to ``RunOptions`` (or the training script); ``options_from_flags`` takes exactly these.
FLAGS: dict[str, tuple[object, str]] = {
    "backend": (None, "local or aws (default local)"),
    "strategy": ("canary", "blue/green traffic shifting: canary (default), linear or all-at-once"),
    "epochs": (None, "training epochs (default: the training script's)"),
    "learning_rate": (None, "training learning rate (default: the training script's)"),
    "mini_batch_size": (None, "images per training step (default: the training script's)"),
    "image_size": (None, "network input size (default: the training script's)"),
    "seed": (None, "training seed (default: the training script's)"),
    "extra": ("", "more training flags as key=value,key=value (e.g. dropout=0.3,freeze-backbone=false)"),
    "val_fraction": (None, "share of the images (whole drivers) put in validation (default 0.2)"),
    "val_drivers": (None, "put this many whole drivers in validation instead"),
    "resize": (None, "converter: shorter edge in pixels (default 256)"),
    "gate_tolerance": (
        None,
        "how much worse than the live model's validation log loss a candidate may be (default 0.05)",
    ),
    "canary_percent": (None, "canary: share of capacity that gets traffic first (default 10)"),
    "wait_seconds": (None, "wait between traffic shifts (default 10)"),
    "bake_seconds": (None, "alarm watch with all traffic on green (default 10)"),
    "alarm_max_p99_ms": (None, "roll back when green's p99 latency passes this (default 2000)"),
    "alarm_max_error_rate": (None, "roll back when green's error rate passes this (default 0.05)"),
    "load_users": (None, "load test: Locust users (default 4)"),
    "load_seconds": (None, "load test: seconds (default 15; 0 skips the load test)"),
    "api_url": (None, "REST API to smoke-test and load (default: the local gateway; the API stage URL on aws)"),
    "capture_percent": (
        None,
        "data capture: share of invocations the endpoint captures once the candidate is "
        "live, 0..100 (default: as it is now, nothing for a new endpoint)",
    ),
}


def options_from_flags(
    *,
    epochs=None,
    learning_rate=None,
    mini_batch_size=None,
    image_size=None,
    seed=None,
    extra=None,
    val_fraction=None,
    val_drivers=None,
    resize=None,
    **rest,
) -> RunOptions:
    """RunOptions from command-line flags (``inv pipeline.run`` / ``pipeline.watch``); unset flags stay unset."""
    hyperparameters = {
        "epochs": epochs,
        "learning-rate": learning_rate,
        "mini-batch-size": mini_batch_size,
        "image-size": image_size,
        "seed": seed,
        **parse_key_values(extra),
    }
    convert = {
        "val_fraction": None if val_fraction is None else float(val_fraction),
        "val_drivers": None if val_drivers is None else int(val_drivers),
        "resize": None if resize is None else int(resize),
    }
    numeric = {
        "canary_percent": int,
        "linear_step_percent": int,
        "wait_seconds": float,
        "bake_seconds": float,
        "alarm_max_error_rate": float,
        "alarm_max_p99_ms": float,
        "gate_tolerance": float,
        "smoke_images": int,
        "load_users": int,
        "load_spawn_rate": float,
        "load_seconds": float,
    }
    given = {k: (numeric[k](v) if k in numeric else v) for k, v in rest.items() if v is not None}
    return RunOptions(
        hyperparameters={k: v for k, v in hyperparameters.items() if v is not None},
        convert={k: v for k, v in convert.items() if v is not None},
        **given,
    )
