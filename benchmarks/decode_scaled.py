"""Per-image decode + resize cost with DCT-scaled JPEG decoding, against full decoding in the same run.

    .venv/bin/python benchmarks/decode_scaled.py [--input-size 224] [--repeat 5] [--log-loss] [--seeds 3]

Images: the default demo sample (``benchmarks/sample_channels.py``): its 640x480
camera frames (what batch prediction and the model server decode; at 224 they
decode at 1/2) and the converter's 341x256 records of the same frames (what
training and evaluation decode; at 224 no power-of-two scale fits, so they
decode at full size and "scaled" is "full"). Each image goes from bytes to the
input size with INTER_AREA, in one thread, three ways:

- ``opencv``: ``cv2.imdecode`` + resize (the decode this project used first);
- ``full``: ``imaging.decode_image`` at full size + resize (artifacts without
  ``jpeg_dct_scaling``), the reference of the ratio;
- ``scaled``: ``decode_image(min_size=S)`` + resize (``jpeg_dct_scaling``);

and the two decodes without the resize, to show where the time goes.

Each image keeps its fastest of ``--repeat`` rounds (the ways interleaved), so
bursts of load from other work cost little. Also printed: how far
the input made from a record is from the input made from its camera frame
(training sees the one, serving the other), with full and with scaled decoding.
With ``--log-loss``, the demo's frozen-backbone training (same split, same
seeds) with full and with scaled decoding, and the validation log loss of each.
A plot goes to ``reports/benchmarks/decode_scaled.png``. Last line: ``ratio X``,
full over scaled milliseconds per camera frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import pyplot, save_figure  # noqa: E402
from sample_channels import sample_channels  # noqa: E402

from distracted_driver.data.channel import read_records  # noqa: E402
from distracted_driver.data.imaging import Preprocessing, decode_image, model_input  # noqa: E402
from distracted_driver.data.layout import TRAIN_DIR  # noqa: E402
from distracted_driver.data.split import read_lst  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLOT = ROOT / "reports" / "benchmarks" / "decode_scaled.png"


def ways(size: int) -> dict:
    def resize(image):
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)

    return {
        "opencv": lambda data: resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)),
        "full": lambda data: resize(decode_image(data)),
        "scaled": lambda data: resize(decode_image(data, min_size=size)),
        "full decode only": decode_image,
        "scaled decode only": lambda data: decode_image(data, min_size=size),
    }


def milliseconds_per_image(images: list[bytes], size: int, repeat: int) -> dict[str, float]:
    """Mean over the images of each image's fastest of ``repeat`` rounds, per way.

    The rounds interleave the ways image by image, and each image keeps its fastest time, so a
    burst of load from other work on this shared machine only costs the round it hit.
    """
    methods = ways(size)
    best = {name: np.full(len(images), np.inf) for name in methods}
    for _ in range(repeat):
        for i, data in enumerate(images):
            for name, way in methods.items():
                started = time.perf_counter()
                way(data)
                best[name][i] = min(best[name][i], time.perf_counter() - started)
    return {name: float(times.mean() * 1e3) for name, times in best.items()}


def frames_and_records(sample: Path, channels: Path) -> tuple[list[bytes], list[bytes]]:
    """The training channel's records and, in the same order, the camera frames they were made from."""
    paths = {entry.index: entry.path for entry in read_lst(channels / "train" / "train.lst")}
    records, _ = read_records(channels / "train")
    keys = [int(record.source.split(":")[1]) for record in records]
    frames = [(sample / TRAIN_DIR / paths[key]).read_bytes() for key in keys]
    return frames, [record.payload for record in records]


def skew(frames: list[bytes], records: list[bytes], params: Preprocessing) -> float:
    """Mean |difference| in 0-255 levels between the input made from a record and from its camera frame."""
    levels = np.asarray(params.std, np.float32)[:, None, None] / params.scale
    total = 0.0
    for frame, record in zip(frames, records):
        total += float(np.mean(np.abs(model_input(frame, params) - model_input(record, params)) * levels))
    return total / len(frames)


def _frame_records(sample: Path, channels: Path, name: str) -> list:
    """The camera frames behind a channel's records, as records with their labels (what serving decodes)."""
    from distracted_driver.data.channel import Record

    return [
        Record(f"frame:{entry.index}", int(entry.label), (sample / TRAIN_DIR / entry.path).read_bytes())
        for entry in read_lst(channels / name / f"{name}.lst")
    ]


def log_losses(sample: Path, channels: Path, size: int, seeds: int) -> dict[tuple[bool, str], list[float]]:
    """Validation log loss of the demo's frozen-backbone training, per seed, with full and with scaled decoding.

    ``(scaled, "records")``: on the validation channel's records, as training and the gate score it;
    ``(scaled, "frames")``: on the same drivers' camera frames, decoded as serving decodes them.
    """
    import torch

    from distracted_driver.model.evaluate import log_loss
    from distracted_driver.system import cpu_count
    from distracted_driver.train.loop import Checkpoints, FeatureExtractor, TrainConfig, cached_features, train_frozen

    torch.set_num_threads(cpu_count())
    train_records, _ = read_records(channels / "train")
    val_records, _ = read_records(channels / "validation")
    val_frames = _frame_records(sample, channels, "validation")
    results: dict[tuple[bool, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        cache = Path(tmp) / "features"
        for scaled in (False, True):
            for seed in range(seeds):  # features are computed once per decoding and cached for the other seeds
                config = TrainConfig(image_size=size, jpeg_dct_scaling=scaled, seed=seed)
                checkpoints = Checkpoints(Path(tmp) / f"{scaled}-{seed}", "benchmark")
                checkpoints.path.parent.mkdir()
                result = train_frozen(
                    config,
                    train_records,
                    val_records,
                    checkpoints,
                    "demo-sample",
                    cache_dir=cache,
                    log=lambda line: None,
                )
                features, labels, _, _ = cached_features(
                    FeatureExtractor(result.model, config),
                    val_frames,
                    config,
                    "frames",
                    cache,
                    "demo-frames",
                    lambda line: None,
                )
                with torch.inference_mode():
                    served = torch.softmax(result.model._fc(features), 1).numpy()
                losses = {
                    "records": min(h["val_log_loss"] for h in result.history),
                    "frames": log_loss(labels.numpy(), served),
                }
                for where, loss in losses.items():
                    results.setdefault((scaled, where), []).append(loss)
                print(
                    f"  {'scaled' if scaled else 'full  '} seed {seed}: validation log loss {losses['records']:.4f} "
                    f"on records, {losses['frames']:.4f} on camera frames",
                    flush=True,
                )
    return results


def plot(costs: dict[str, dict[str, float]], size: int) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(next(iter(costs.values())))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [costs[group][name] for group in costs]
        bars = ax.bar(np.arange(len(costs)) + i * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(np.arange(len(costs)) + width * (len(names) - 1) / 2, list(costs))
    ax.set_ylabel("ms per image, one thread")
    ax.set_title(f"decode + INTER_AREA resize to {size}x{size}")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, PLOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5, help="rounds per image and way, fastest kept (default 5)")
    parser.add_argument("--log-loss", action="store_true", help="also train on the demo data both ways")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds with --log-loss (default 3)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    size = args.input_size

    sample, channels = sample_channels()
    frames, records = frames_and_records(sample, channels)
    shapes = {
        name: decode_image(data[0], min_size=size).shape[:2]
        for name, data in (("frames", frames), ("records", records))
    }
    print(
        f"{len(frames)} camera frames (640x480, decoded at {shapes['frames'][1]}x{shapes['frames'][0]}) and their "
        f"records (341x256, decoded at {shapes['records'][1]}x{shapes['records'][0]}); input {size}x{size}"
    )
    costs = {}
    for group, images in (("camera frames", frames), ("records", records)):
        costs[group] = milliseconds_per_image(images, size, args.repeat)
        line = ", ".join(f"{name} {ms:.3f} ms" for name, ms in costs[group].items())
        print(f"{group:<14} {line}   full/scaled {costs[group]['full'] / costs[group]['scaled']:.2f}", flush=True)

    full, scaled = Preprocessing(input_size=size, jpeg_dct_scaling=False), Preprocessing(input_size=size)
    print(
        f"record vs camera frame, mean |difference| of the model input in 0-255 levels: "
        f"full decoding {skew(frames, records, full):.2f}, scaled {skew(frames, records, scaled):.2f}"
    )
    if args.log_loss:
        losses = log_losses(sample, channels, size, args.seeds)
        for where in ("records", "frames"):
            full_losses, scaled_losses = losses[(False, where)], losses[(True, where)]
            print(
                f"validation log loss on {where:<7} (seed 0 / mean of {args.seeds} seeds): "
                f"full {full_losses[0]:.4f} / {statistics.mean(full_losses):.4f}, "
                f"scaled {scaled_losses[0]:.4f} / {statistics.mean(scaled_losses):.4f}"
            )
    print(f"plot {plot(costs, size)}")
    frames_cost = costs["camera frames"]
    print(f"opencv_ratio {frames_cost['opencv'] / frames_cost['scaled']:.2f}  (OpenCV decode + resize / scaled)")
    print(f"ratio {frames_cost['full'] / frames_cost['scaled']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
