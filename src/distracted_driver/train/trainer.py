"""What every training backend offers: run one job on the bucket's channels, store and register its model.

``open_trainer`` (in ``distracted_driver.train``) chooses the backend from the settings: the local
SageMaker-style job (``train.runner``) or a SageMaker training job (``train.sagemaker``).
"""

from __future__ import annotations

import abc


class TrainingFailed(RuntimeError):
    """A training job did not complete; the message says why (and where its log is)."""


class Trainer(abc.ABC):
    @abc.abstractmethod
    def train(self, hyperparameters: dict, *, resume: str | None = None) -> str:
        """Run a job with these script flags, store and register its model; the job name (= model version).

        ``resume`` names an earlier job that did not complete, continued from its last checkpoint where
        the backend can. Raises ``TrainingFailed`` when the job fails.
        """
