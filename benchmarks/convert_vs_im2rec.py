"""Throughput of our converter against MXNet's im2rec.py on the same .lst with the same flags.

    .venv/bin/python benchmarks/convert_vs_im2rec.py [--images 2000] [--workers N] [--repeat 2]

Both convert the same 640x480 JPEGs (the sample generator's, cached under
.work/bench) with ``--resize 256 --quality 95`` on all cores: im2rec with
``--num-thread N`` in the MXNet environment (.venvs/mxnet, built with
``make mxnet-env`` if missing), ours with ``--workers N``. Each is timed from
inside its own process, after imports and before its worker pool starts, so
interpreter start-up and ``import mxnet`` are not counted against im2rec.
The page cache is warmed first so neither pays for the disk; the runs are
interleaved and the best of ``--repeat`` kept. CPU time per image (process
and reaped workers) is printed too: on a machine shared with other work it
moves much less than wall-clock throughput.

Also checks that the outputs agree (records byte-identical, or the PSNR of
the decoded pixels). The last line is ``ratio X``: our images/s over im2rec's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from distracted_driver.data import layout, recordio
from distracted_driver.data.convert import ConvertOptions, convert_list, default_workers
from distracted_driver.data.sample import generate_sample
from distracted_driver.data.split import read_driver_list, write_lst

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".work" / "bench"
MXNET_PYTHON = ROOT / ".venvs" / "mxnet" / "bin" / "python"
DRIVERS = 26

# Runs inside the MXNet environment: import first, then time im2rec's own __main__ (its worker processes fork
# from here, as they do when im2rec.py is run as a script).
IM2REC_RUNNER = """
import os, resource, runpy, sys, time
import cv2, mxnet
def cpu():
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
script = os.path.join(os.path.dirname(mxnet.__file__), "tools", "im2rec.py")
sys.argv = [script] + sys.argv[1:]
started, cpu_started = time.perf_counter(), cpu()
runpy.run_path(script, run_name="__main__")
print("ELAPSED", time.perf_counter() - started, cpu() - cpu_started)
"""


def ensure_mxnet() -> None:
    if not MXNET_PYTHON.exists():
        print("building the MXNet environment (make mxnet-env) ...", flush=True)
        subprocess.run(["make", "mxnet-env"], cwd=ROOT, check=True)


def ensure_images(count: int) -> Path:
    per_class_driver = -(-count // (DRIVERS * len(layout.CLASSES)))
    root = BENCH / f"sample-{DRIVERS}x{per_class_driver}"
    if not (root / layout.DRIVER_LIST).is_file():
        print(f"drawing {DRIVERS * 10 * per_class_driver} sample images into {root} (cached) ...", flush=True)
        generate_sample(root, drivers=DRIVERS, images_per_class_driver=per_class_driver, test_images=0, overwrite=True)
    return root


def warm_page_cache(image_root: Path) -> int:
    return sum(len(path.read_bytes()) for path in image_root.rglob("*.jpg"))


def cpu_seconds() -> float:
    """CPU time of this process and all its descendants that have ended.

    Our workers are children of the fork server (a child of ours that lives on), which reaps them:
    their time shows in its ``children_*`` times.
    """
    total = sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )
    for child in psutil.Process().children():
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def run_im2rec(lst: Path, image_root: Path, workers: int) -> tuple[float, float]:
    work = BENCH / "im2rec"
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("bench.*"):
        stale.unlink()
    (work / "bench.lst").write_bytes(lst.read_bytes())
    command = [
        str(MXNET_PYTHON),
        "-c",
        IM2REC_RUNNER,
        str(work / "bench"),
        str(image_root),
        "--resize",
        "256",
        "--quality",
        "95",
        "--num-thread",
        str(workers),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    wall, cpu = result.stdout.split("ELAPSED")[-1].split()
    return float(wall), float(cpu)


def run_ours(lst: Path, image_root: Path, workers: int) -> tuple[float, float]:
    started, cpu_started = time.perf_counter(), cpu_seconds()
    convert_list(
        lst, image_root, BENCH / "ours", "bench", ConvertOptions(resize=256, quality=95), workers, progress=False
    )
    return time.perf_counter() - started, cpu_seconds() - cpu_started


def agreement() -> tuple[int, int, float]:
    """(identical records, records, lowest PSNR in dB) between our output and im2rec's."""

    def load(directory: Path) -> dict[int, bytes]:
        with recordio.IndexedRecordReader(directory / "bench.idx", directory / "bench.rec") as reader:
            return dict(iter(reader))

    ours, theirs = load(BENCH / "ours"), load(BENCH / "im2rec")
    if list(ours) != list(theirs):
        raise SystemExit("the two outputs hold different keys")
    identical, worst = 0, float("inf")
    for key, record in ours.items():
        if record == theirs[key]:
            identical += 1
            continue
        a, b = (
            cv2.imdecode(np.frombuffer(recordio.unpack(r)[1], np.uint8), 1).astype(np.float64)
            for r in (record, theirs[key])
        )
        mse = float(np.mean((a - b) ** 2)) if a.shape == b.shape else float("inf")
        worst = min(worst, 10 * np.log10(255**2 / mse) if mse else float("inf"))
    return identical, len(ours), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="at least this many images (default 2000)")
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="processes for both (default: all cores)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, best kept (default 2)")
    args = parser.parse_args()

    ensure_mxnet()
    sample = ensure_images(args.images)
    image_root = sample / layout.TRAIN_DIR
    entries = read_driver_list(sample)
    lst = BENCH / "lists" / "bench.lst"
    write_lst(lst, entries)
    size = warm_page_cache(image_root)
    print(
        f"{len(entries)} images, 640x480 JPEG, {size / len(entries) / 1e3:.0f} kB each; "
        f"--resize 256 --quality 95, {args.workers} processes each"
    )

    runs: dict[str, list[tuple[float, float]]] = {"im2rec": [], "ours": []}
    for _ in range(args.repeat):  # interleaved, so a burst of load elsewhere hits both alike
        runs["im2rec"].append(run_im2rec(lst, image_root, args.workers))
        runs["ours"].append(run_ours(lst, image_root, args.workers))
    n = len(entries)
    rate = {name: n / min(wall for wall, _ in timed) for name, timed in runs.items()}
    cpu_ms = {name: 1e3 * min(cpu for _, cpu in timed) / n for name, timed in runs.items()}
    labels = {
        "im2rec": f"im2rec.py (mxnet 1.9.1, --num-thread {args.workers})",
        "ours": f"ours, strict libjpeg-turbo decode (--workers {args.workers})",
    }
    for name in ("im2rec", "ours"):
        print(f"{labels[name]:<52} {rate[name]:7.1f} images/s  {cpu_ms[name]:5.2f} CPU ms/image")
    identical, total, worst = agreement()
    print(
        f"records byte-identical to im2rec's: {identical}/{total}"
        + ("" if identical == total else f"; lowest PSNR of the others {worst:.1f} dB")
    )
    rounded = {name: [[round(wall, 2), round(cpu, 2)] for wall, cpu in timed] for name, timed in runs.items()}
    print("runs (wall s, CPU s): " + json.dumps(rounded))
    print(f"cpu_ratio {cpu_ms['im2rec'] / cpu_ms['ours']:.2f}  (im2rec CPU per image / ours)")
    print(f"ratio {rate['ours'] / rate['im2rec']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
