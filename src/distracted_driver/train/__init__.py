"""Training stage: the model, the loop, the export, the job, the quality gate and the job launchers.

Importing this package must not import torch: the gate and the launchers run on
installs that have no torch (the artifact, its evaluation and the registry are ``model``'s).

``open_trainer`` is the one door to the training backends, as ``open_hosting`` is to hosting.
"""

from __future__ import annotations

import sys
from typing import IO

from distracted_driver.config import Settings
from distracted_driver.train.trainer import Trainer, TrainingFailed

__all__ = ["Trainer", "TrainingFailed", "open_trainer"]


def open_trainer(settings: Settings, *, algorithm: str = "script", stream: IO[str] | None = sys.stdout) -> Trainer:
    """The training backend for the settings: a local job, or a SageMaker training job.

    ``algorithm`` (SageMaker only): ``script`` (scripts/train.py in the PyTorch container) or ``builtin``
    (SageMaker's image-classification algorithm). ``stream`` gets the job's log lines (None: quiet).
    """
    # Each backend is imported when chosen: boto3 and sagemaker-core are the aws extra's, not every install's.
    if settings.backend == "aws":
        from distracted_driver.train.sagemaker import SageMakerTrainer

        return SageMakerTrainer(settings, algorithm=algorithm, stream=stream)
    from distracted_driver.train.runner import LocalTrainer

    return LocalTrainer(settings, stream=stream)
