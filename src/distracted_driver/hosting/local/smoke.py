"""The images a green fleet must classify before it gets any traffic.

Real camera frames: a few labelled images from the bucket's raw prefix, one
per class while they last; before any data was added, frames drawn by the
sample generator's cabin renderer (the same scenes the sample data holds).
This pre-traffic check only asks for valid probabilities. Whether serving
answers what evaluation scored is the release smoke test's question: it sends
the gate's smoke set (real validation images with the gate's probabilities)
through the endpoint after the swap (``hosting.release.verify_endpoint``).
"""

from __future__ import annotations

import cv2
import numpy as np

from distracted_driver.config import Settings
from distracted_driver.data import cabin
from distracted_driver.data.layout import CLASSES, TRAIN_DIR
from distracted_driver.storage import Storage

DEFAULT_COUNT = 3


def bucket_images(storage: Storage, settings: Settings, count: int = DEFAULT_COUNT) -> list[bytes]:
    """Up to ``count`` JPEGs from ``raw/imgs/train/``, from different classes."""
    chosen = []
    for classname in CLASSES:
        keys = [k for k in storage.list_keys(f"{settings.raw_prefix}/{TRAIN_DIR}/{classname}/") if k.lower().endswith((".jpg", ".jpeg"))]
        if keys:
            chosen.append(keys[0])
        if len(chosen) == count:
            break
    return [storage.get_bytes(key) for key in chosen]


def drawn_images(count: int = DEFAULT_COUNT, seed: int = 0) -> list[bytes]:
    """Cabin scenes from the sample renderer, as JPEG."""
    images = []
    for number in range(count):
        rng = np.random.default_rng([seed, number])
        look = cabin.random_look(rng)
        frame = cabin.render(look, CLASSES[number % len(CLASSES)], rng, cabin.lighting_map(look), cabin.SensorNoise(rng))
        ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 frame
            raise RuntimeError("JPEG encoding failed")
        images.append(encoded.tobytes())
    return images


def smoke_images(storage: Storage, settings: Settings, count: int = DEFAULT_COUNT) -> list[bytes]:
    return bucket_images(storage, settings, count) or drawn_images(count)
