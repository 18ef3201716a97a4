"""What a stage is given and how it answers: the run's context, a failure, an early stop.

Stages (``pipeline.stages``) and the walk over them (``pipeline.run``) both use
these; keeping them here lets neither import the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from distracted_driver.config import Settings
from distracted_driver.pipeline.options import RunOptions
from distracted_driver.pipeline.records import RunRecord, RunStore, StageRecord
from distracted_driver.storage import Storage


class StageFailed(Exception):
    """A stage could not do its work; the message is the reason people read."""


@dataclass(frozen=True)
class Stop:
    """A stage's verdict that ends the run early with an outcome."""

    outcome: str
    reason: str


@dataclass
class RunContext:
    settings: Settings
    storage: Storage
    store: RunStore
    options: RunOptions
    record: RunRecord
    log: Callable[[str], None]
    stream: TextIO | None = None  # where long stages (training) copy their output; None: quiet
    progress: bool = True  # progress bars of long stages
    resumed: RunRecord | None = None  # with --resume: the run this one continues
    outputs: dict[str, dict] = field(default_factory=dict)  # outputs of finished stages, by stage name
    carried: dict[str, StageRecord] = field(default_factory=dict)  # stages the resumed run finished, taken over
    _memo: dict = field(default_factory=dict)

    def memo(self, key: str, compute: Callable):
        """Compute once per run (live model, hosting handle, reuse checks)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def memo_clear(self, key: str) -> None:
        self._memo.pop(key, None)

    def reusable(self, stage) -> dict | None:
        """The cached outputs of ``stage`` for its current inputs, if still valid; else None."""

        def check():
            inputs = stage.inputs(self)
            entry = self.store.recall(stage.name, StageRecord.hash_inputs(inputs))
            if entry and stage.still_valid(self, entry["outputs"]):
                return entry
            return None

        return self.memo(f"reusable:{stage.name}", check)
