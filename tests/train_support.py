"""Helpers for the training tests: tiny real channels and a bucket holding them."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from distracted_driver.config import Settings
from distracted_driver.data.channels import build_channels, upload_channels
from distracted_driver.data.sample import generate_sample
from distracted_driver.storage import open_storage

# Small enough for seconds of training, large enough that every class is in both channels.
TINY_SAMPLE = {"drivers": 6, "images_per_class_driver": 1, "test_images": 4, "seed": 3}
TINY_HYPERPARAMETERS = {"epochs": 2, "image-size": 160, "mini-batch-size": 16, "freeze-backbone": True}


class TrainedJob(NamedTuple):
    settings: Settings
    job: str


def build_tiny_channels(root: Path) -> Path:
    """A Kaggle-layout sample of 6 drivers (2 in validation), converted to RecordIO channels."""
    sample = root / "sample"
    generate_sample(sample, progress=False, **TINY_SAMPLE)
    channels = root / "channels"
    build_channels(sample, channels, val_drivers=2, progress=False, workers=1)
    return channels


def bucket_with_channels(root: Path, channels: Path) -> Settings:
    """Settings whose local bucket under ``root`` holds ``channels`` at ``data/``."""
    settings = Settings(root=root)
    upload_channels(open_storage(settings), channels, settings.data_prefix)
    return settings
