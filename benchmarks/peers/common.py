"""What both peers' services share: the benchmark's model, loaded and prepared exactly as our server does.

The peer reads its settings from the environment the benchmark sets: ``DD_PEER_MODEL_DIR`` (an
unpacked artifact), ``DD_PEER_BATCH`` and ``DD_PEER_BATCH_DELAY_MS``. It serves the fp32 model of
the artifact with our ``Classifier`` (the same ONNX Runtime session options) and our
``Classifier.prepare`` (the same decode and preprocessing). A request is JSON
``{"image": "<base64 JPEG>"}``, the peers' own way of taking a binary input; the answer is the
ten probabilities.
"""

from __future__ import annotations

import base64
import os

import cv2
import numpy as np

from distracted_driver.model.artifact import load_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.model.precision import FP32

MODEL_DIR = os.environ.get("DD_PEER_MODEL_DIR", "")
BATCH = int(os.environ.get("DD_PEER_BATCH", "8"))
BATCH_DELAY_S = float(os.environ.get("DD_PEER_BATCH_DELAY_MS", "5")) / 1000.0


def load_classifier() -> Classifier:
    cv2.setNumThreads(1)  # as our model server does
    return Classifier(load_artifact(MODEL_DIR).serving_as(FP32))


def prepare(classifier: Classifier, encoded: str) -> np.ndarray:
    """A base64 JPEG → one preprocessed input, through the artifact's own decode and preprocessing."""
    return classifier.prepare(base64.b64decode(encoded))


def predict(classifier: Classifier, inputs: list[np.ndarray]) -> list[list[float]]:
    return classifier.predict(np.stack(inputs)).tolist()
