"""Training-time augmentation on decoded BGR frames (OpenCV, before the shared preprocessing).

No horizontal flips: they would turn "texting - right" into "texting - left".
Each image gets its own generator seeded from (seed, epoch, index), so a
resumed run sees the same augmentations as an uninterrupted one whatever the
thread scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augmentation:
    max_rotation: float = 10.0  # degrees
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.06  # fraction of the image size
    brightness: float = 0.2  # ± fraction of 255 added
    contrast: float = 0.2  # ± relative gain

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = image.shape[:2]
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        scale = rng.uniform(*self.scale_range)
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        matrix[:, 2] += rng.uniform(-self.max_shift, self.max_shift, size=2) * (width, height)
        warped = cv2.warpAffine(
            image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        offset = 255.0 * rng.uniform(-self.brightness, self.brightness)
        return cv2.convertScaleAbs(warped, alpha=gain, beta=offset + (1.0 - gain) * 127.5)


def augmenter(augmentation: Augmentation, seed: int, epoch: int):
    """A function ``(image, index) -> image`` for one epoch."""

    def augment(image: np.ndarray, index: int) -> np.ndarray:
        return augmentation.apply(image, np.random.default_rng((seed, epoch, index)))

    return augment
