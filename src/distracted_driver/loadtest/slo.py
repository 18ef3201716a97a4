"""Service-level objectives of a load test, read from ``load_test/slo.toml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distracted_driver.config import dataclass_from_toml


@dataclass(frozen=True)
class SLO:
    max_failure_ratio: float = 0.01
    p50_ms: float = 500.0
    p95_ms: float = 1500.0
    p99_ms: float = 2000.0
    min_requests: int = 20

    @classmethod
    def load(cls, path: str | Path) -> SLO:
        return dataclass_from_toml(cls, path, "slo", "SLO keys")

    def misses(self, summary) -> list[str]:
        """One line per objective the run missed (empty when all were met)."""
        if summary.requests < self.min_requests:
            return [f"requests: {summary.requests} < {self.min_requests} (too few to judge)"]
        misses = []
        if summary.failure_ratio > self.max_failure_ratio:
            misses.append(f"failure ratio: {summary.failure_ratio:.2%} > {self.max_failure_ratio:.2%}")
        for name in ("p50", "p95", "p99"):
            measured, limit = getattr(summary, f"{name}_ms"), getattr(self, f"{name}_ms")
            if measured > limit:
                misses.append(f"{name}: {measured:.0f} ms > {limit:.0f} ms")
        return misses
