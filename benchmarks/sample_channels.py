"""The default demo sample (26 drivers x 10 classes x 3 images, ~20% of drivers in validation) as
RecordIO channels, built once and cached under ``.work/benchmarks/sample`` for the training benchmarks."""

from __future__ import annotations

from pathlib import Path

from distracted_driver.data.channels import ChannelsError, build_channels, verify_channels
from distracted_driver.data.sample import generate_sample

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".work" / "benchmarks" / "sample"


def sample_channels(cache: Path = CACHE) -> tuple[Path, Path]:
    """``(sample root in the Kaggle layout, channel directory)``; generated on first use."""
    sample, channels = cache / "kaggle", cache / "channels"
    try:
        verify_channels(channels)
    except ChannelsError:
        print(f"building the default sample and its channels under {cache} (once)", flush=True)
        generate_sample(sample, overwrite=True, progress=False)
        build_channels(sample, channels, val_fraction=0.2, progress=False)
    return sample, channels
