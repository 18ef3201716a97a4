"""The whole pipeline at the size of the Kaggle competition, on this machine: wall time, images/s and memory per stage.

    .venv/bin/python benchmarks/kaggle_scale.py [--scale 0.1] [--work DIR] [--json FILE] [--epochs N]

``--scale 1.0`` is the competition's size: 22,424 training images of 26 drivers
with its class balance (c0 2489 ... c9 2129) and 79,726 test images, 640x480
JPEGs; the default 0.1 is a tenth of it. Stages, each in its own process(es):

1. ``generate``: the images, drawn by worker processes on every core and cached
   under ``<work>/data-scale<S>-seed<N>`` (reused while complete);
2. ``add``: ``inv data.add`` into a fresh local bucket under ``<work>/run-scale<S>``;
3. ``inv pipeline.run`` stages (``python -m distracted_driver.pipeline run``):
   materialize, convert, upload, train (frozen backbone), evaluate, gate,
   deploy (all at once) and smoke; the load test is off;
4. ``predict``: ``inv predict.batch --model live`` over the whole test set into
   ``<run>/submission.csv``.

Then the endpoint is stopped. Per stage: wall seconds (the pipeline's own run
record for its stages), images, images/s, and peak RSS: the sum over the
stage's processes (the one running it and its descendants: converter
workers, the training job, and from deploy on the endpoint it started, the
local runtime and its model server), sampled every 0.1 s. In-process stages
also carry what the pipeline process kept from earlier ones. Printed as a
table, drawn as ``reports/benchmarks/kaggle_scale.png``,
and written as JSON with ``--json`` (``tests/test_kaggle_scale.py`` reads it).
The last lines compare batch prediction with its target (79,726 images in
under 8 minutes on 2 cores) at the rate measured here, and at its CPU time
per image with every core free (this machine is shared: wall-clock rates move
with the load of other work, CPU time much less).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import pyplot, save_figure  # noqa: E402

from distracted_driver.config import Settings  # noqa: E402
from distracted_driver.data.layout import DRIVER_LIST, TEST_DIR  # noqa: E402
from distracted_driver.data.sample import KAGGLE_TEST_IMAGES, generate_sample, kaggle_size  # noqa: E402
from distracted_driver.pipeline.options import RunOptions  # noqa: E402
from distracted_driver.pipeline.records import RunStore  # noqa: E402
from distracted_driver.storage import open_storage  # noqa: E402
from distracted_driver.system import cpu_count  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).parent / "inv"
PLOT = ROOT / "reports" / "benchmarks" / "kaggle_scale.png"
DRIVERS = 26
TARGET_PREDICT_MINUTES = 8.0
SAMPLE_SECONDS = 0.1
STAGE_LINE = re.compile(r"^(\w+): (running|done|failed)")


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    images: int = 0
    peak_rss_mb: float = 0.0
    status: str = "done"
    cpu_seconds: float | None = None  # user + system of all its processes, where a stage is a process of its own

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds and self.images else 0.0


class TreeMemory:
    """Samples the summed RSS of a process and its descendants in a thread; keeps the peak per label."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.label = ""
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def rss(self) -> int:
        total = 0
        try:
            processes = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            label, rss = self.label, self.rss()
            if label:
                self.peaks[label] = max(self.peaks.get(label, 0), rss)
            self._stop.wait(SAMPLE_SECONDS)


def _mb(value: int) -> float:
    return round(value / 2**20, 1)


def generate(data_dir: Path, scale: float, seed: int) -> Stage:
    """The images (cached: a tree whose stamp matches is reused); measured in this process and its workers."""
    classes, test = kaggle_size(scale)
    stamp = {"scale": scale, "seed": seed, "drivers": DRIVERS, "class_counts": classes, "test_images": test}
    stamp_path = data_dir.parent / f".{data_dir.name}.json"
    stamp = json.loads(json.dumps(stamp))  # as it reads back (tuples become lists)
    if (data_dir / DRIVER_LIST).is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        print(f"generate: cached in {data_dir} ({sum(classes)} train, {test} test images)", flush=True)
        return Stage("generate", status="cached")
    print(
        f"generate: {sum(classes)} train images of {DRIVERS} drivers and {test} test images -> {data_dir}", flush=True
    )
    stamp_path.unlink(missing_ok=True)
    started = time.perf_counter()
    with TreeMemory(os.getpid()) as memory:
        memory.label = "generate"
        report = generate_sample(
            data_dir,
            drivers=DRIVERS,
            test_images=test,
            seed=seed,
            class_counts=classes,
            overwrite=True,
            workers=cpu_count(),
        )
    stamp_path.write_text(json.dumps(stamp))
    return Stage(
        "generate",
        time.perf_counter() - started,
        report.train_images + report.test_images,
        _mb(memory.peaks["generate"]),
    )


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(command: list[str], env: dict, label: str, log_path: Path) -> tuple[int, dict[str, int], dict]:
    """Run ``command``; its log goes to ``log_path``. RSS peaks per stage (from its ``<stage>: running`` lines).

    Returns (exit status, peaks by label, {label: wall seconds between its lines, "cpu": CPU seconds of
    the command and every descendant it reaped}).
    """
    cpu_started = _children_cpu_seconds()
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        with TreeMemory(process.pid) as memory:
            memory.label = label
            started[label] = time.perf_counter()
            for line in process.stdout:
                log.write(line)
                match = STAGE_LINE.match(line)
                if match is None:
                    continue
                print(f"  {line.rstrip()}", flush=True)
                stage, state = match.groups()
                if state == "running":
                    memory.label, started[stage] = stage, time.perf_counter()
                else:
                    seconds[stage] = time.perf_counter() - started.get(stage, time.perf_counter())
                    memory.label = label
            code = process.wait()
    seconds[label] = time.perf_counter() - started[label]
    seconds["cpu"] = _children_cpu_seconds() - cpu_started
    return code, memory.peaks, seconds


def inv(*args: str) -> list[str]:
    return [sys.executable, str(INV), *args]


def pipeline_options(epochs: int | None) -> RunOptions:
    hyperparameters = {"epochs": epochs} if epochs else {}
    return RunOptions(
        hyperparameters=hyperparameters, strategy="all-at-once", wait_seconds=1.0, bake_seconds=2.0, load_seconds=0.0
    )


def pipeline_stages(settings: Settings, peaks: dict[str, int], counts: dict) -> list[Stage]:
    """The stages of the latest run record, with their images and RSS peaks."""
    record = RunStore(open_storage(settings), settings).history()[-1]
    stages = []
    for stage in record.stages:
        if stage.status == "pending":
            continue
        stages.append(
            Stage(stage.name, stage.seconds, counts.get(stage.name, 0), _mb(peaks.get(stage.name, 0)), stage.status)
        )
    return stages


def stage_images(settings: Settings, train_images: int) -> dict[str, int]:
    """Images each pipeline stage handled, from the data manifest in the bucket."""
    try:
        manifest = json.loads(open_storage(settings).get_bytes(f"{settings.data_prefix}/manifest.json"))
    except Exception:  # noqa: BLE001 - the run failed before upload: only the raw count is known
        return {"materialize": train_images, "convert": train_images}
    written = {name: counts["written"] for name, counts in manifest["counts"].items()}
    records = sum(written.values())
    validation = written.get("validation", 0)
    # The gate scores the live model again only when there is one; on this fresh bucket there is not.
    return {
        "materialize": train_images,
        "convert": train_images,
        "upload": records,
        "train": records,
        "evaluate": validation,
    }


def print_table(stages: list[Stage]) -> None:
    print(f"\n{'stage':<12}{'status':<10}{'seconds':>9}{'images':>9}{'images/s':>10}{'peak RSS MB':>13}{'CPU s':>8}")
    for s in stages:
        rate = f"{s.images_per_second:.1f}" if s.images_per_second else "-"
        images = str(s.images) if s.images else "-"
        rss = f"{s.peak_rss_mb:.0f}" if s.peak_rss_mb else "-"
        cpu = f"{s.cpu_seconds:.1f}" if s.cpu_seconds is not None else ""
        print(f"{s.name:<12}{s.status:<10}{s.seconds:>9.1f}{images:>9}{rate:>10}{rss:>13}{cpu:>8}")


def plot(stages: list[Stage], scale: float) -> Path:
    plt = pyplot()
    shown = [s for s in stages if s.seconds]
    names = [s.name for s in shown][::-1]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    time_ax.barh(names, [s.seconds for s in shown][::-1], color="tab:blue")
    time_ax.set_xlabel("wall seconds")
    memory_ax.barh(names, [s.peak_rss_mb for s in shown][::-1], color="tab:orange")
    memory_ax.set_xlabel("peak RSS, MB (all processes of the stage)")
    fig.suptitle(f"Kaggle scale {scale:g} on {cpu_count()} cores")
    fig.tight_layout()
    return save_figure(fig, PLOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the competition's size (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / ".work" / "kaggle-scale",
        help="where the images are cached and the run's bucket lives",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the training default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    classes, test = kaggle_size(args.scale)
    data_dir = args.work / f"data-scale{args.scale:g}-seed{args.seed}"
    run_dir = args.work / f"run-scale{args.scale:g}"
    settings = Settings(root=run_dir)
    env = {**os.environ, "DD_ROOT": str(run_dir)}
    args.work.mkdir(parents=True, exist_ok=True)
    stages = [generate(data_dir, args.scale, args.seed)]

    subprocess.run(inv("down"), cwd=ROOT, env=env, capture_output=True)  # a stack a killed run left behind
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    print(f"bucket and work directories under {run_dir}", flush=True)
    try:
        code, peaks, seconds = run_measured(inv("data.add", "--from", str(data_dir)), env, "add", run_dir / "add.log")
        stages.append(
            Stage(
                "add",
                seconds["add"],
                sum(classes),
                _mb(peaks.get("add", 0)),
                "done" if code == 0 else f"exit {code}",
                seconds["cpu"],
            )
        )
        if code != 0:
            raise SystemExit(f"data.add failed; see {run_dir / 'add.log'}")
        options = json.dumps(pipeline_options(args.epochs).to_dict())
        code, peaks, _ = run_measured(
            [sys.executable, "-m", "distracted_driver.pipeline", "run", "--options", options],
            env,
            "pipeline",
            run_dir / "pipeline.log",
        )
        stages += pipeline_stages(settings, peaks, stage_images(settings, sum(classes)))
        if code != 0:
            raise SystemExit(f"the pipeline ended with exit status {code}; see {run_dir / 'pipeline.log'}")
        submission = run_dir / "submission.csv"
        code, peaks, seconds = run_measured(
            inv("predict.batch", "--model", "live", "--images", str(data_dir / TEST_DIR), "--out", str(submission)),
            env,
            "predict",
            run_dir / "predict.log",
        )
        rows = len(submission.read_text().splitlines()) - 1 if submission.is_file() else 0
        stages.append(
            Stage(
                "predict",
                seconds["predict"],
                rows,
                _mb(peaks.get("predict", 0)),
                "done" if code == 0 else f"exit {code}",
                seconds["cpu"],
            )
        )
        if code != 0 or rows != test:
            raise SystemExit(f"batch prediction wrote {rows} of {test} rows; see {run_dir / 'predict.log'}")
    finally:
        subprocess.run(inv("down"), cwd=ROOT, env=env, capture_output=True)
        print_table(stages)

    predict = stages[-1]
    full_minutes = KAGGLE_TEST_IMAGES / predict.images_per_second / 60
    cpu_ms = 1e3 * predict.cpu_seconds / predict.images
    cpu_bound_minutes = KAGGLE_TEST_IMAGES * cpu_ms / 1e3 / cpu_count() / 60
    load = os.getloadavg()[0]
    print(f"\nplot {plot(stages, args.scale)}; submission {run_dir / 'submission.csv'}")
    print(f"scale {args.scale:g}: {sum(classes)} train and {test} test images, {cpu_count()} cores")
    print(
        f"batch prediction: {predict.images_per_second:.1f} images/s -> the full test set ({KAGGLE_TEST_IMAGES}) in "
        f"{full_minutes:.1f} min (target < {TARGET_PREDICT_MINUTES:g} min, i.e. "
        f"{KAGGLE_TEST_IMAGES / TARGET_PREDICT_MINUTES / 60:.0f} images/s)"
    )
    print(
        f"batch prediction CPU: {cpu_ms:.1f} ms per image -> with all {cpu_count()} cores free, the full test set "
        f"in {cpu_bound_minutes:.1f} min (load average now {load:.1f}: other work shares these cores)"
    )
    print(f"peak RSS of any stage: {max(s.peak_rss_mb for s in stages):.0f} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "scale": args.scale,
                    "cores": cpu_count(),
                    "train_images": sum(classes),
                    "test_images": test,
                    "stages": [{**asdict(s), "images_per_second": round(s.images_per_second, 2)} for s in stages],
                    "predict_minutes_at_full_scale": round(full_minutes, 2),
                    "predict_cpu_ms_per_image": round(cpu_ms, 2),
                    "predict_cpu_bound_minutes": round(cpu_bound_minutes, 2),
                    "load_average": round(load, 2),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
