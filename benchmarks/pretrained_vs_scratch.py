"""Does ImageNet initialisation help? The same fine-tuning run from the shipped weights and from random ones.

    .venv/bin/python benchmarks/pretrained_vs_scratch.py [--epochs 3] [--image-size 96] [--device cpu]

Fair comparison: both runs train every weight (``--freeze-backbone false``) with the
same recipe and budget: the same images (the default demo sample, drivers split as
``make demo`` splits them), epochs, batch size, learning rate and schedule,
augmentation and seed; only the starting weights differ. (Training only a head on a
frozen *random* backbone would handicap the scratch model by protocol, not by its
initialisation.) On a CPU the budget is kept small with a reduced input size.

Prints each run's per-epoch progress, then the best validation log loss (unseen
drivers) of each. Last line: ``pretrained X scratch Y``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_channels import sample_channels  # noqa: E402

from distracted_driver.data.channel import read_records  # noqa: E402
from distracted_driver.train.loop import Checkpoints, TrainConfig, train_finetune  # noqa: E402


def run(pretrained: bool, args, train_records, val_records) -> dict:
    config = TrainConfig(
        mode="finetune",
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        image_size=args.image_size,
        augmentation=True,
        seed=args.seed,
        patience=args.epochs,
        pretrained=pretrained,
        device=args.device,
    )
    name = "pretrained" if pretrained else "scratch"
    print(f"--- {name}: {config}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        result = train_finetune(
            config,
            train_records,
            val_records,
            Checkpoints(tmp, "benchmark"),
            log=lambda line: print(f"  {line}", flush=True),
        )
    best = min(result.history, key=lambda h: h["val_log_loss"])
    return {
        "log_loss": best["val_log_loss"],
        "accuracy": best["val_accuracy"],
        "epoch": best["epoch"],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    _, channels = sample_channels()
    train_records, _ = read_records(channels / "train")
    val_records, _ = read_records(channels / "validation")
    print(
        f"{len(train_records)} train / {len(val_records)} validation images (drivers split), "
        f"{args.epochs} epochs at {args.image_size}px on {args.device}",
        flush=True,
    )
    results = {pretrained: run(pretrained, args, train_records, val_records) for pretrained in (True, False)}
    for pretrained, r in results.items():
        print(
            f"{'pretrained' if pretrained else 'scratch':<10} best validation log loss {r['log_loss']:.4f} "
            f"(accuracy {r['accuracy']:.3f}, epoch {r['epoch']}) in {r['seconds']:.0f}s"
        )
    print(f"pretrained {results[True]['log_loss']:.4f} scratch {results[False]['log_loss']:.4f}")


if __name__ == "__main__":
    main()
