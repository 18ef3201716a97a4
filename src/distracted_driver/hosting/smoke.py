"""The smoke check every hosting backend runs on a new model before it keeps it live.

The images: real camera frames, a few labelled images from the bucket's raw
prefix, one per class while they last; before any data was added, frames drawn
by the sample generator's cabin renderer (the same scenes the sample data holds).

The check only asks for valid probabilities (``answer_problem``): the local
runtime asks it of every green instance before green gets any traffic; SageMaker
has no such hook, so its backend asks it through SageMaker Runtime once the swap
is done, and swaps back when it fails. Whether serving answers what evaluation
scored is the release smoke test's question: it sends the gate's smoke set (real
validation images with the gate's probabilities) through the endpoint after the
swap (``hosting.release.verify_endpoint``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import cv2
import numpy as np

from distracted_driver.config import Settings
from distracted_driver.data import cabin
from distracted_driver.data.layout import CLASSES, TRAIN_DIR
from distracted_driver.data.payload import image_content_type
from distracted_driver.model.artifact import probability_problem
from distracted_driver.storage import Storage

DEFAULT_COUNT = 3


def bucket_images(storage: Storage, settings: Settings, count: int = DEFAULT_COUNT) -> list[bytes]:
    """Up to ``count`` JPEGs from ``raw/imgs/train/``, from different classes."""
    chosen = []
    for classname in CLASSES:
        keys = [
            k
            for k in storage.list_keys(f"{settings.raw_prefix}/{TRAIN_DIR}/{classname}/")
            if k.lower().endswith((".jpg", ".jpeg"))
        ]
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
        frame = cabin.render(
            look, CLASSES[number % len(CLASSES)], rng, cabin.lighting_map(look), cabin.SensorNoise(rng)
        )
        ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 frame
            raise RuntimeError("JPEG encoding failed")
        images.append(encoded.tobytes())
    return images


def smoke_images(storage: Storage, settings: Settings, count: int = DEFAULT_COUNT) -> list[bytes]:
    """The default smoke images: the bucket's labelled frames, else drawn ones."""
    return bucket_images(storage, settings, count) or drawn_images(count)


def content_type(image: bytes) -> str:
    """The Content-Type a smoke image is sent with (JPEG unless it is a PNG)."""
    return image_content_type(image) or "image/jpeg"


def answer_problem(body: bytes, classes: int = len(CLASSES)) -> str | None:
    """Why an answer is not a valid probability list (the artifact contract's check), or None."""
    try:
        values = json.loads(body)
    except ValueError:
        return f"the answer is not JSON: {body[:200]!r}"
    if not (isinstance(values, list) and len(values) == classes and all(isinstance(v, (int, float)) for v in values)):
        return f"expected a JSON list of {classes} numbers, got {body[:200]!r}"
    return probability_problem([values])


def smoke_problems(invoke: Callable[[bytes, str], bytes], images: list[bytes]) -> list[str]:
    """Send each image through ``invoke(body, content_type) -> answer``; what was wrong with the answers."""
    if not images:
        return ["no smoke images were given"]
    problems = []
    for number, image in enumerate(images):
        try:
            body = invoke(image, content_type(image))
        except Exception as error:  # noqa: BLE001 - every failed request is the finding
            problems.append(f"smoke image {number}: no answer ({type(error).__name__}: {error})")
            continue
        problem = answer_problem(body)
        if problem:
            problems.append(f"smoke image {number}: {problem}")
    return problems
