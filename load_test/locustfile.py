"""Locust users that post real camera frames to ``POST /predict`` with the API key.

Run through ``inv loadtest`` (headless, bounded, SLO-gated), or by hand:

    DD_API_KEY=... locust -f load_test/locustfile.py --host http://127.0.0.1:8088

Environment:
    DD_API_KEY           value for the ``x-api-key`` header
    DD_LOADTEST_IMAGES   a directory of JPEGs (default: the sample test images,
                         ``.work/sample/imgs/test``); when none are found, a few
                         frames are drawn with OpenCV instead
    DD_LOADTEST_WAIT_S   pause between a user's requests (default 0: closed loop)
    DD_LOADTEST_MAX_IMAGES  at most this many images held in memory (default 64)
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from locust import HttpUser, constant, task

DEFAULT_IMAGES = Path(".work/sample/imgs/test")


def load_images() -> list[bytes]:
    directory = Path(os.environ.get("DD_LOADTEST_IMAGES") or DEFAULT_IMAGES)
    limit = int(os.environ.get("DD_LOADTEST_MAX_IMAGES", "64"))
    paths = sorted(directory.glob("*.jpg"))[:limit] if directory.is_dir() else []
    images = [p.read_bytes() for p in paths]
    return images or drawn_frames()


def drawn_frames(count: int = 8) -> list[bytes]:
    """640x480 JPEGs with a few shapes, for when no sample images exist."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(count):
        frame = np.full((480, 640, 3), rng.integers(40, 200, 3), dtype=np.uint8)
        for _ in range(6):
            x, y = (int(v) for v in rng.integers(0, 600, 2))
            cv2.circle(
                frame, (x, min(y, 460)), int(rng.integers(20, 90)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1
            )
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        frames.append(jpeg.tobytes())
    return frames


def failure_reason(response) -> str:
    """The API's JSON message (without the request id, so that Locust groups equal failures)."""
    if response.status_code == 0:
        return str(response.error)
    try:
        return str(response.json().get("message"))[:200]
    except (ValueError, AttributeError):
        return response.text[:200]


IMAGES = load_images()


class PredictUser(HttpUser):
    wait_time = constant(float(os.environ.get("DD_LOADTEST_WAIT_S", "0")))

    def on_start(self) -> None:
        self.headers = {"Content-Type": "image/jpeg", "x-api-key": os.environ.get("DD_API_KEY", "")}

    @task
    def predict(self) -> None:
        image = random.choice(IMAGES)
        with self.client.post(
            "/predict", data=image, headers=self.headers, name="/predict", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {failure_reason(response)}")
                return
            try:
                answer = response.json()
            except ValueError:
                response.failure("the answer is not JSON")
                return
            if not isinstance(answer, dict) or answer.get("class") not in {f"c{i}" for i in range(10)}:
                response.failure(f"unexpected answer: {response.text[:200]}")
