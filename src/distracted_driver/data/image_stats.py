"""Per-image statistics that say what a camera delivers, whatever the model makes of it.

One function per statistic, each of a decoded BGR frame (``data.imaging.decode_image``).
The training job records them for its channels' images (``train.baseline``) and the
drift report measures captured images with the same functions (``monitor``), so a
frame gives the same numbers on both sides.
"""

from __future__ import annotations

import cv2
import numpy as np

STATISTICS = ("size", "aspect", "brightness", "contrast", "sharpness")


def grey(image: np.ndarray) -> np.ndarray:
    """The frame's luma (OpenCV's BT.601 weights), uint8; a one-channel frame is returned as it is."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def size(image: np.ndarray) -> float:
    """Pixels in the frame (width x height)."""
    return float(image.shape[0] * image.shape[1])


def aspect(image: np.ndarray) -> float:
    """Width over height."""
    return image.shape[1] / image.shape[0]


def brightness(luma: np.ndarray) -> float:
    """Mean grey level, 0..255."""
    return float(cv2.mean(luma)[0])


def contrast(luma: np.ndarray) -> float:
    """RMS contrast: the standard deviation of the grey levels."""
    return float(cv2.meanStdDev(luma)[1][0, 0])


def sharpness(luma: np.ndarray) -> float:
    """Variance of the Laplacian: high for crisp edges, low for a blurred or out-of-focus frame."""
    return float(cv2.meanStdDev(cv2.Laplacian(luma, cv2.CV_64F))[1][0, 0] ** 2)


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Every statistic of ``STATISTICS`` for one decoded frame."""
    luma = grey(image)
    return {
        "size": size(image),
        "aspect": aspect(image),
        "brightness": brightness(luma),
        "contrast": contrast(luma),
        "sharpness": sharpness(luma),
    }
