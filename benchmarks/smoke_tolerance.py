"""How far serving may drift from evaluation: the smoke test's tolerance against real differences.

    .venv/bin/python benchmarks/smoke_tolerance.py [--epochs 40] [--image-size 224] [--plot reports/smoke_tolerance.png]

Trains a real model (the training job, frozen backbone) on the default demo sample, lets the gate
score it and pick its smoke set (2 validation images per class), deploys it on the local runtime and
sends the smoke images through the endpoint. Then it computes, offline with the same ONNX file, the
probabilities the smoke images get under changes a serving stack can drift into, and prints for each
the largest difference from the gate's probabilities and the accuracy on the smoke images:

- the endpoint itself (the normal difference between evaluation and serving);
- evaluation batched one image at a time instead of 32;
- every pixel moved by -1, 0 or +1 grey level (what another JPEG decoder's rounding does);
- the same image re-encoded by a client as JPEG quality 90 (not a serving change: new input);
- ImageNet's mean/std in preprocess.json instead of the model's own;
- BGR instead of RGB channel order;
- bilinear instead of area resizing;
- pixels scaled by 1/256 instead of 1/255;
- the classes rotated by one (a wrong model), with its log loss on all validation images.

Also draws the differences against the tolerance (``--plot``). Last line:
``tolerance T normal D_normal smallest-change D_change``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_channels import sample_channels  # noqa: E402

from distracted_driver.config import Settings  # noqa: E402
from distracted_driver.data.channels import upload_channels  # noqa: E402
from distracted_driver.data.imaging import Preprocessing, decode_image, preprocess  # noqa: E402
from distracted_driver.hosting.base import TrafficRouting  # noqa: E402
from distracted_driver.hosting.local import LocalHosting  # noqa: E402
from distracted_driver.hosting.release import release  # noqa: E402
from distracted_driver.model.evaluate import log_loss, predict_channel  # noqa: E402
from distracted_driver.model.inference import Classifier  # noqa: E402
from distracted_driver.model.registry import Registry  # noqa: E402
from distracted_driver.storage import open_storage  # noqa: E402
from distracted_driver.train.gate import SMOKE_TOLERANCE, judge, smoke_set_for  # noqa: E402
from distracted_driver.train.runner import run_local_job  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _normalised(rgb: np.ndarray, params: Preprocessing) -> np.ndarray:
    rgb = rgb.astype(np.float32) * params.scale
    rgb = (rgb - np.asarray(params.mean, np.float32)) / np.asarray(params.std, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def variants(params: Preprocessing) -> dict:
    """name -> function(image bytes) -> network input, each one change away from ``preprocess``."""
    size = params.input_size

    def reencoded(data):
        image = decode_image(data)
        return preprocess(
            decode_image(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()), params
        )

    def bilinear(data):
        resized = cv2.resize(decode_image(data), (size, size), interpolation=cv2.INTER_LINEAR)
        return _normalised(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB), params)

    def rounding(data):
        image = decode_image(data).astype(np.int16)
        noise = np.random.default_rng(len(data)).integers(-1, 2, size=image.shape)
        return preprocess(np.clip(image + noise, 0, 255).astype(np.uint8), params)

    def bgr(data):
        return _normalised(cv2.resize(decode_image(data), (size, size), interpolation=cv2.INTER_AREA), params)

    return {
        "+-1 grey level per pixel (decoder rounding)": rounding,
        "client re-encodes JPEG q90 (new input)": reencoded,
        "ImageNet mean/std in preprocess.json": lambda data: preprocess(
            decode_image(data), dataclasses.replace(params, **IMAGENET)
        ),
        "BGR instead of RGB": bgr,
        "bilinear instead of area resize": bilinear,
        "scale 1/256 instead of 1/255": lambda data: preprocess(
            decode_image(data), dataclasses.replace(params, scale=1 / 256)
        ),
    }


def row(name: str, probabilities, smoke) -> tuple[str, float, float]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    difference = float(np.abs(probabilities - np.asarray(smoke.probabilities)).max())
    accuracy = float((probabilities.argmax(axis=1) == np.asarray(smoke.labels)).mean())
    return name, difference, accuracy


def plot(rows, tolerance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    names = [name for name, _, _ in rows]
    values = [max(difference, 1e-9) for _, difference, _ in rows]
    ax.barh(names, values, color=["tab:green" if v <= tolerance else "tab:red" for v in values])
    for position, (_, difference, _) in enumerate(rows):
        ax.text(max(difference, 1e-9), position, f" {difference:.2g}", va="center")
    ax.axvline(tolerance, color="black", linestyle="--", label=f"smoke tolerance {tolerance:g}")
    ax.set_xscale("log")
    ax.set_xlim(1e-9, 10)
    ax.set_xlabel("largest |probability served - probability evaluated| on the smoke images (0 drawn at 1e-9)")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--plot", default=str(ROOT / "reports" / "smoke_tolerance.png"))
    args = parser.parse_args()

    _, channels = sample_channels()
    with tempfile.TemporaryDirectory(prefix="bench-smoke-", dir=ROOT / ".work") as tmp:
        settings = Settings(root=Path(tmp))
        storage = open_storage(settings)
        upload_channels(storage, channels, settings.data_prefix)
        print(f"training (frozen backbone, {args.image_size} px, up to {args.epochs} epochs)", flush=True)
        job = run_local_job(settings, {"epochs": args.epochs, "image-size": args.image_size}, stream=None)
        registry = Registry(storage, settings)
        decision = judge(registry, job)
        print(f"gate: {decision.reason}", flush=True)
        smoke = smoke_set_for(registry, job)
        hosting = LocalHosting(settings, storage=storage)
        try:
            done = release(
                settings, hosting, job, TrafficRouting(strategy="all-at-once", bake_seconds=0), storage=storage
            )
            assert done.result.outcome == "deployed", done.result
            rows = [("served through the local endpoint", done.smoke.max_difference, done.smoke.accuracy)]
        finally:
            hosting.stop_runtime()

        artifact = registry.fetch_artifact(job, Path(tmp) / "artifact")
        classifier = Classifier(artifact)
        one_by_one = [classifier.predict(classifier.prepare(image)[None])[0] for image in smoke.images]
        rows.append(row("evaluation one image per batch", one_by_one, smoke))
        for name, prepare in variants(artifact.preprocessing).items():
            rows.append(row(name, classifier.predict(np.stack([prepare(i) for i in smoke.images])), smoke))
        rows.append(
            row("classes rotated by one (wrong model)", np.roll(np.asarray(smoke.probabilities), 1, axis=1), smoke)
        )

        scored = predict_channel(artifact, channels / "validation", progress=False)
        rotated_loss = log_loss(scored.labels, np.roll(scored.probabilities, 1, axis=1))
        rotated_accuracy = float((np.roll(scored.probabilities, 1, axis=1).argmax(axis=1) == scored.labels).mean())

    print(f"\nsmoke set: {len(smoke)} validation images, gate accuracy on them {smoke.accuracy:.3f}")
    print(f"{'what':<46} {'max |dp|':>10} {'accuracy':>9}  verdict")
    for name, difference, accuracy in rows:
        verdict = "passes" if difference <= SMOKE_TOLERANCE and accuracy >= smoke.accuracy else "rolls back"
        print(f"{name:<46} {difference:>10.2e} {accuracy:>9.3f}  {verdict}")
    print(
        f"model: validation log loss {decision.candidate_log_loss:.4f}, accuracy {decision.candidate_accuracy:.3f}; "
        f"rotated by one: log loss {rotated_loss:.4f}, accuracy {rotated_accuracy:.3f} on {len(scored.labels)} images"
    )
    plot(rows, SMOKE_TOLERANCE, Path(args.plot))
    print(f"plot: {args.plot}")
    normal = max(rows[0][1], rows[1][1])
    changes = [difference for name, difference, _ in rows[4:8]]
    print(f"tolerance {SMOKE_TOLERANCE:g} normal {normal:.2e} smallest-change {min(changes):.2e}")


if __name__ == "__main__":
    main()
