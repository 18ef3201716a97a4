"""What the drift report says about traffic like training and about shifted traffic, through the real endpoint.

    .venv/bin/python benchmarks/drift_windows.py [--drivers 10] [--per-class 2] [--plot reports/drift_windows.png]

Trains the demo's model (the pipeline on the default sample: 26 drivers, 5 of them in validation,
frozen backbone, 224 px), deploys it on the local runtime with every request captured, then sends
windows of traffic through the endpoint, each of new drivers (``--drivers``, ``--per-class`` images
of each class): three drawn like training (other drivers each time), then another camera angle, a
new cabin and night (``inv data.sample --shift``). Each window is judged by the drift report on
what the runtime captured (``monitor.report.drift_report`` with ``--since`` the window's start).

Prints one row per window: accuracy of the live model on it (the generator knows the classes), the
verdict, the checks that drifted, and the figures (PSI, low-confidence share, confidence KS, the
largest image-statistic KS, the feature-distance ratio), then the thresholds. Draws each figure over
its limit per window (``--plot``).

Then the labelling loop on the night window: ``monitor.export`` of its captured images, labels and
drivers from the generator (the reviewer), ``data.add``, a pipeline run (retraining; the gate
judges), and the log loss of the old and the new live model on night drivers neither saw.

Last lines: ``like-training max/limit ... shifted min/limit ...`` for the figures that separate
them, and ``loop: ...`` with both log losses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from distracted_driver.config import Settings
from distracted_driver.data.ingest import add_data
from distracted_driver.data.sample import generate_sample
from distracted_driver.hosting import open_hosting
from distracted_driver.hosting.local.client import sagemaker_runtime_client
from distracted_driver.monitor.capture import iter_capture_records
from distracted_driver.monitor.report import drift_report
from distracted_driver.pipeline.options import RunOptions
from distracted_driver.pipeline.run import run_pipeline
from distracted_driver.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
# The night window comes last: the labelling loop exports everything captured since it began.
WINDOWS = (
    ("like training A", None, 100),
    ("like training B", None, 300),
    ("like training C", None, 600),
    ("camera angle", "angle", 400),
    ("new cabin", "cabin", 500),
    ("night", "night", 200),
)


def send_window(settings: Settings, client, paths: list[Path]) -> tuple[datetime, list[int], list[int]]:
    """Post the images; (window start, true classes, the endpoint's answers)."""
    import json

    def send(path: Path) -> int:
        answer = client.invoke_endpoint(
            EndpointName=settings.endpoint_name, ContentType="image/jpeg", Body=path.read_bytes()
        )
        return int(np.argmax(json.loads(answer["Body"].read())))

    time.sleep(1.1)  # captured times have whole seconds: the next window starts on a new one
    start = datetime.now(UTC).replace(microsecond=0)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, paths))
    return start, [int(p.parent.name[1:]) for p in paths], answers


def wait_for_capture(settings: Settings, since: datetime, count: int) -> None:
    storage = open_storage(settings)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            sum(1 for _ in iter_capture_records(storage, settings.capture_prefix, settings.endpoint_name, since=since))
            >= count
        ):
            return
        time.sleep(0.5)
    raise RuntimeError(f"fewer than {count} requests captured since {since}")


def figures(report: dict) -> dict[str, float]:
    checks = report["checks"]
    return {
        "psi": checks["predicted_classes"]["psi"],
        "low_conf": checks["confidence"]["low_confidence_share"],
        "conf_ks": checks["confidence"]["ks_statistic"],
        "stat_ks": max(c["ks_statistic"] for c in checks["image_statistics"].values()),
        "feature_ratio": checks["features"]["ratio"],
    }


def limits_of(report: dict) -> dict[str, float]:
    t = report["thresholds"]
    base_low = report["checks"]["confidence"]["baseline_low_confidence_share"]
    return {
        "psi": t["max_class_psi"],
        "low_conf": base_low + t["max_low_confidence_increase"],
        "conf_ks": t["max_confidence_ks"],
        "stat_ks": t["max_statistic_ks"],
        "feature_ratio": t["max_frechet_ratio"],
    }


def plot(rows: list[tuple[str, dict, dict]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0][1])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, name in enumerate(names):
        ax.bar(x + (i - len(names) / 2 + 0.5) * 0.15, [r[1][name] / r[2][name] for r in rows], 0.15, label=name)
    ax.axhline(1.0, color="tab:red", linestyle=":", label="limit")
    ax.set_xticks(x, [r[0] for r in rows])
    ax.set_ylabel("figure / its limit (log)")
    ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("drift report per window of captured traffic (over 1 = drift)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def labelling_loop(settings: Settings, root: Path, old: str, since: datetime, batch: Path) -> str:
    """Export the night window for review, label it from the generator, add it, retrain; both models' scores."""
    import csv

    from distracted_driver.hashing import sha256_bytes
    from distracted_driver.model.cache import fetch_artifact
    from distracted_driver.model.evaluate import log_loss
    from distracted_driver.model.inference import Classifier
    from distracted_driver.model.registry import Registry
    from distracted_driver.monitor.export import export_window

    with open(batch / "driver_imgs_list.csv", newline="") as handle:
        truth = {
            sha256_bytes((batch / "imgs" / "train" / r["classname"] / r["img"]).read_bytes()): r
            for r in csv.DictReader(handle)
        }
    review = root / "review"
    exported = export_window(settings, review, since=since)
    with open(review / "driver_imgs_list.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        known = truth[sha256_bytes((review / "imgs" / "train" / row[3] / row[2]).read_bytes())]
        row[0], row[1] = known["subject"], known["classname"]
    with open(review / "driver_imgs_list.csv", "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    added = add_data(open_storage(settings), settings, review, progress=False)
    started = time.perf_counter()
    record = run_pipeline(
        settings,
        RunOptions(load_seconds=0.0, wait_seconds=1.0, bake_seconds=1.0),
        log=lambda message: None,
        stream=None,
        progress=False,
    )
    new = Registry(open_storage(settings), settings).live()["job"]
    unseen = root / "night-unseen"
    generate_sample(
        unseen,
        drivers=4,
        images_per_class_driver=2,
        test_images=0,
        seed=8,
        first_driver=800,
        shift="night",
        progress=False,
    )
    paths = sorted((unseen / "imgs" / "train").glob("c*/*.jpg"))
    labels = np.array([int(p.parent.name[1:]) for p in paths])
    scores = {}
    for job in (old, new):
        classifier = Classifier(fetch_artifact(settings, job))
        batch_in = np.stack([classifier.prepare(p.read_bytes()) for p in paths])
        probabilities = np.concatenate([classifier.predict(batch_in[i : i + 32]) for i in range(0, len(paths), 32)])
        scores[job] = (log_loss(labels, probabilities), float((probabilities.argmax(1) == labels).mean()))
    return (
        f"loop: exported {exported.exported}, added {len(added.added)}, pipeline {record.outcome} in "
        f"{time.perf_counter() - started:.0f} s; on {len(paths)} images of 4 night drivers neither model saw: "
        f"live {old} log loss {scores[old][0]:.4f} (accuracy {scores[old][1]:.3f}), "
        f"new {new} log loss {scores[new][0]:.4f} (accuracy {scores[new][1]:.3f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drivers", type=int, default=10, help="new drivers per window")
    parser.add_argument("--per-class", type=int, default=2, help="images of each class per driver")
    parser.add_argument("--plot", default=str(ROOT / "reports" / "drift_windows.png"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="drift-windows-") as tmp:
        root = Path(tmp)
        settings = Settings(root=root)
        try:
            generate_sample(root / "sample", progress=False)
            add_data(open_storage(settings), settings, root / "sample", progress=False)
            started = time.perf_counter()
            record = run_pipeline(
                settings,
                RunOptions(load_seconds=0.0, wait_seconds=1.0, bake_seconds=1.0, capture_percent=100),
                log=lambda message: None,
                stream=None,
                progress=False,
            )
            if record.outcome != "deployed":
                print(f"the pipeline ended {record.outcome}: {record.reason}", file=sys.stderr)
                return 1
            print(
                f"model {record.model_version} trained and deployed with 100 % capture in "
                f"{time.perf_counter() - started:.0f} s"
            )
            client = sagemaker_runtime_client(open_hosting(settings).status().runtime_url, settings.region)
            rows = []
            header = (
                f"{'window':16} {'n':>4} {'acc':>5} {'verdict':9} {'psi':>6} {'low':>5} {'confKS':>6} "
                f"{'statKS':>6} {'feat':>5} {'report s':>8}  drifted"
            )
            print(header)
            for name, shift, first in WINDOWS:
                batch = root / f"window-{first}"
                generate_sample(
                    batch,
                    drivers=args.drivers,
                    images_per_class_driver=args.per_class,
                    test_images=0,
                    seed=3,
                    first_driver=first,
                    shift=shift,
                    progress=False,
                )
                paths = sorted((batch / "imgs" / "train").glob("c*/*.jpg"))
                since, truth, answers = send_window(settings, client, paths)
                if shift == "night":
                    night_since, night_batch = since, batch
                wait_for_capture(settings, since, len(paths))
                timer = time.perf_counter()
                result = drift_report(settings, since=since, out_root=root / "reports")
                seconds = time.perf_counter() - timer
                report = result.report
                values, limits = figures(report), limits_of(report)
                rows.append((name, values, limits))
                accuracy = float(np.mean(np.array(truth) == np.array(answers)))
                print(
                    f"{name:16} {report['records']['answered']:>4} {accuracy:5.3f} {result.verdict:9} "
                    f"{values['psi']:6.3f} {values['low_conf']:5.3f} {values['conf_ks']:6.3f} "
                    f"{values['stat_ks']:6.3f} {values['feature_ratio']:5.2f} {seconds:8.1f}  "
                    f"{', '.join(report['drifted_checks']) or '-'}",
                    flush=True,
                )
            print("thresholds: " + ", ".join(f"{k} {v:g}" for k, v in rows[0][2].items()))
            plot(rows, Path(args.plot))
            like = [r for r in rows if r[0].startswith("like")]
            shifted = [r for r in rows if not r[0].startswith("like")]
            summary = []
            for key in ("feature_ratio", "stat_ks", "conf_ks"):
                summary.append(
                    f"{key}: like-training max {max(r[1][key] / r[2][key] for r in like):.2f} "
                    f"shifted min {min(r[1][key] / r[2][key] for r in shifted):.2f} (of the limit)"
                )
            print(f"plot: {args.plot}")
            print("; ".join(summary))
            print(labelling_loop(settings, root, record.model_version, night_since, night_batch))
        finally:
            open_hosting(settings).delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
