"""Small Kaggle-layout trees for the data tests, drawn with OpenCV (fast, deterministic)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from distracted_driver.data import layout


def draw_frame(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = rng.integers(30, 220, 3)
    for _ in range(6):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, centre, int(rng.integers(10, 120)), colour, -1)
    noise = rng.normal(0, 4, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def write_kaggle_tree(root: Path, drivers: int = 6, per_class: int = 1, seed: int = 0, size=(640, 480)) -> Path:
    """``root/imgs/train/cN/img_*.jpg`` + ``driver_imgs_list.csv``; returns root."""
    rows = []
    number = 0
    for d in range(drivers):
        subject = f"p{d + 2:03d}"
        for c in layout.CLASSES:
            folder = root / layout.TRAIN_DIR / c
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(per_class):
                name = f"img_{number}.jpg"
                frame = draw_frame(seed * 100_003 + number, *size)
                cv2.imwrite(str(folder / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
                rows.append((subject, c, name))
                number += 1
    with open(root / layout.DRIVER_LIST, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(layout.DRIVER_LIST_HEADER)
        writer.writerows(rows)
    return root
