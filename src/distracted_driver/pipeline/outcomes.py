"""How a pipeline run ends: the one table of outcomes and exit statuses.

People read the outcome, CI acts on the exit status. ``deployed`` and
``nothing-to-do`` are successes (0); every other outcome has its own non-zero
status so a build log or a shell script can tell them apart without parsing
text. ``failed:<stage>`` gets one status per stage.
"""

from __future__ import annotations

# Stages in the order data moves through them. "lock" is not a stage of the
# flow but a run can fail to start there (another run holds the lock).
STAGES = ("materialize", "convert", "upload", "train", "evaluate", "gate", "deploy", "smoke", "loadtest")

DEPLOYED = "deployed"
NOTHING_TO_DO = "nothing-to-do"
REJECTED_BY_GATE = "rejected-by-gate"
ROLLED_BACK = "rolled-back"
FAILED_PREFIX = "failed:"

_EXIT_CODES = {
    DEPLOYED: 0,
    NOTHING_TO_DO: 0,
    REJECTED_BY_GATE: 3,
    ROLLED_BACK: 4,
    f"{FAILED_PREFIX}lock": 9,
    **{f"{FAILED_PREFIX}{stage}": 10 + i for i, stage in enumerate(STAGES)},
}


def failed(stage: str) -> str:
    if stage not in STAGES and stage != "lock":
        raise ValueError(f"unknown stage {stage!r}")
    return f"{FAILED_PREFIX}{stage}"


def exit_code(outcome: str) -> int:
    """The process exit status for an outcome; 1 for anything unknown (a bug, not a result)."""
    return _EXIT_CODES.get(outcome, 1)


def exit_code_table() -> list[tuple[str, int]]:
    """(outcome, exit status) rows, for ``pipeline.history`` help and the README."""
    return sorted(_EXIT_CODES.items(), key=lambda item: item[1])
