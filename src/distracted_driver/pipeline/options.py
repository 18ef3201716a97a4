"""What a pipeline run may be told: everything here is part of some stage's inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from distracted_driver.hosting.base import STRATEGIES


@dataclass(frozen=True)
class RunOptions:
    # Training hyperparameters given explicitly; the training script's defaults fill the rest.
    hyperparameters: dict = field(default_factory=dict)
    # Options of the split + convert step (validation fraction, resize, quality, seed, ...).
    convert: dict = field(default_factory=dict)
    # Gate: how much worse than the live model's log loss a candidate may be (None: the registry's default).
    gate_tolerance: float | None = None
    # Blue/green deployment.
    strategy: str = "canary"
    canary_percent: int = 10
    linear_step_percent: int = 25
    wait_seconds: float = 10.0
    bake_seconds: float = 10.0
    # Verification after a deploy: one smoke request, then a bounded load test (0 s: none).
    smoke_images: int = 3
    load_users: int = 4
    load_spawn_rate: float = 4.0
    load_seconds: float = 15.0
    # Continue the latest interrupted or failed run instead of starting a new one.
    resume: bool = False
    lock_max_age_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.load_seconds < 0 or self.load_users < 1:
            raise ValueError("load test: seconds must be >= 0 and users >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> "RunOptions":
        return cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})
