"""Model serving over HTTP versus the in-process limit, measured in the same run.

    .venv/bin/python benchmarks/serve_vs_limit.py [--seconds 15] [--rounds 2] [--direct]

The model is EfficientNet-Lite0 at 224x224 (ImageNet backbone, a fresh
10-class head; exported with ``train.model`` + ``train.export``), the
payloads are 640x480 JPEG frames of the sample generator.

- **in-process**: ``serve.batch_predict.predict_payloads``: decode + preprocess
  on a pool of one thread per core, ONNX Runtime with one intra-op thread per
  core, batches of ``--batch-size`` (the model server's default), no HTTP.
- **HTTP**: a closed loop of ``--clients`` concurrent aiohttp requests (raw
  aiohttp, payloads encoded once) through the local runtime's router
  (``hosting.local.LocalHosting``: one endpoint, one instance = one model
  server), or straight at one model server with ``--direct`` or when the
  router is not available.
- **latency at half load**: an open loop at half the HTTP throughput; p50/p99.

Rounds alternate in-process and HTTP so that load from elsewhere on the
machine hits both alike; each side keeps its best round. Last line: ``ratio X``
(HTTP images/s ÷ in-process images/s).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import numpy as np

from distracted_driver.config import Settings
from distracted_driver.data.imaging import Preprocessing
from distracted_driver.data.layout import labels_document
from distracted_driver.fsutil import write_json_atomic
from distracted_driver.model import artifact as contract
from distracted_driver.model.inference import Classifier
from distracted_driver.serve.batch_predict import predict_payloads
from distracted_driver.system import cpu_count

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".work" / "benchmarks" / "serve_vs_limit"
VERSION = "bench-efficientnet-lite0"
IMAGE_SIZE = 224


# --- inputs ------------------------------------------------------------------------------


def build_artifact(out_dir: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet backbone, seeded 10-class head) as a model.tar.gz; cached."""
    tar_path = out_dir / "model.tar.gz"
    if tar_path.exists():
        return tar_path
    from distracted_driver.train.export import export_onnx
    from distracted_driver.train.model import build_model

    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(build_model(pretrained=True, seed=0).eval(), model_dir / contract.MODEL_FILE, IMAGE_SIZE)
    write_json_atomic(model_dir / contract.LABELS_FILE, labels_document())
    write_json_atomic(model_dir / contract.PREPROCESS_FILE, Preprocessing(input_size=IMAGE_SIZE).to_dict())
    write_json_atomic(model_dir / contract.METRICS_FILE, {"log_loss": 2.3, "accuracy": 0.1})
    write_json_atomic(model_dir / contract.PROVENANCE_FILE, {"model_version": VERSION, "note": "benchmark model"})
    return contract.pack_artifact(model_dir, tar_path)


def sample_payloads(count: int) -> list[bytes]:
    """``count`` distinct 640x480 JPEG frames from the sample generator (cached)."""
    from distracted_driver.data.sample import generate_sample

    sample_dir = CACHE / f"sample-{count}"
    if not sample_dir.exists():
        generate_sample(sample_dir, drivers=1, images_per_class_driver=1, test_images=count, seed=11, progress=False)
    paths = sorted((sample_dir / "imgs" / "test").glob("*.jpg"))[:count]
    return [p.read_bytes() for p in paths]


# --- the two sides -------------------------------------------------------------------------


def in_process(classifier: Classifier, payloads: list[bytes], seconds: float, batch_size: int) -> float:
    """Images/s of decode + preprocess + ONNX Runtime in this process, over about ``seconds``."""
    names = [str(i) for i in range(len(payloads))]
    predict_payloads(classifier, names[: batch_size * 2], lambda n: payloads[int(n)], batch_size, progress=False)
    estimate = predict_payloads(classifier, names, lambda n: payloads[int(n)], batch_size, progress=False)
    repeats = max(1, round(seconds * estimate.images_per_second / len(names)))
    result = predict_payloads(classifier, names * repeats, lambda n: payloads[int(n)], batch_size, progress=False)
    assert not result.failed, result.failed
    return result.images_per_second


async def closed_loop(url: str, payloads: list[bytes], clients: int, seconds: float) -> tuple[float, int]:
    """``clients`` requests always in flight for ``seconds``; (images/s answered 200, failures)."""
    done, failures = 0, 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        headers = {"Content-Type": "image/jpeg"}
        end = time.perf_counter() + seconds

        async def client(offset: int) -> None:
            nonlocal done, failures
            i = offset
            while time.perf_counter() < end:
                async with session.post(url, data=payloads[i % len(payloads)], headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                    else:
                        failures += 1
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        return done / (time.perf_counter() - started), failures


async def open_loop(url: str, payloads: list[bytes], rate: float, seconds: float) -> tuple[np.ndarray, int]:
    """Requests started at a fixed ``rate`` for ``seconds`` whatever the answers; (latencies in s, failures)."""
    latencies, _, failures = await tagged_open_loop(url, payloads, rate, seconds, tag=lambda: None)
    return latencies, failures


async def tagged_open_loop(
    url: str, payloads: list[bytes], rate: float, seconds: float, tag
) -> tuple[np.ndarray, list, int]:
    """``open_loop``, each answer also tagged with ``tag()`` as it was when its request started;
    (latencies in s, their tags, failures)."""
    latencies, tags, failures = [], [], 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        headers = {"Content-Type": "image/jpeg"}

        async def one(i: int) -> None:
            nonlocal failures
            started, label = time.perf_counter(), tag()
            async with session.post(url, data=payloads[i % len(payloads)], headers=headers) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - started)
                    tags.append(label)
                else:
                    failures += 1

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return np.asarray(latencies), tags, failures


# --- endpoints ----------------------------------------------------------------------------


@contextmanager
def router_endpoint(tar_path: Path, workdir: Path):
    """One-instance endpoint of the local runtime; yields its invocation URL."""
    with router_hosting(tar_path, workdir) as hosting:
        base = hosting.status().runtime_url.rstrip("/")
        yield f"{base}/endpoints/{hosting.settings.endpoint_name}/invocations"


@contextmanager
def router_hosting(tar_path: Path, workdir: Path, **options):
    """One-instance endpoint of the local runtime; yields its ``LocalHosting`` (``options`` go to it)."""
    from distracted_driver.hosting.base import AlarmThresholds, ModelSpec, TrafficRouting
    from distracted_driver.hosting.local import LocalHosting
    from distracted_driver.model.artifact import load_artifact
    from distracted_driver.model.registry import Registry
    from distracted_driver.storage import open_storage

    settings = Settings(
        root=workdir, bucket_dir=workdir / "bucket", state_dir=workdir / "state", work_dir=workdir / "work"
    )
    storage = open_storage(settings)
    key = f"{settings.models_prefix}/{VERSION}/output/model.tar.gz"
    storage.put_file(tar_path, key)
    Registry(storage, settings).register(VERSION, load_artifact(tar_path.parent / "model"))
    hosting = LocalHosting(settings, **options)
    try:
        result = hosting.deploy(ModelSpec(VERSION, key), TrafficRouting(strategy="all-at-once"), AlarmThresholds())
        if result.outcome != "deployed":
            raise RuntimeError(f"deploy failed: {result.outcome} {result.reason}")
        yield hosting
    finally:
        hosting.delete()


@contextmanager
def direct_endpoint(tar_path: Path, batch_size: int, log_path: Path):
    """One model server process; yields its /invocations URL."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distracted_driver.serve.server",
                "--model-dir",
                str(tar_path.parent / "model"),
                "--port",
                "0",
                "--max-batch-size",
                str(batch_size),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 120
        while not (match := re.search(r"listening on (http://\S+)", log_path.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log_path.read_text()}")
            time.sleep(0.05)
        base = match.group(1)
        while "ready after" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not get ready: {log_path.read_text()}")
            time.sleep(0.05)
        yield f"{base}/invocations"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of in-process and HTTP")
    parser.add_argument("--batch-size", type=int, default=8, help="images per ONNX Runtime run (server default 8)")
    parser.add_argument("--clients", type=int, default=0, help="concurrent HTTP clients (default 3 x batch size)")
    parser.add_argument("--images", type=int, default=64, help="distinct payloads")
    parser.add_argument("--direct", action="store_true", help="bypass the router: one model server only")
    args = parser.parse_args()
    clients = args.clients or 3 * args.batch_size
    use_router = not args.direct

    CACHE.mkdir(parents=True, exist_ok=True)
    tar_path = build_artifact(CACHE / VERSION)
    payloads = sample_payloads(args.images)
    from distracted_driver.model.artifact import load_artifact

    classifier = Classifier(load_artifact(tar_path.parent / "model"))
    path = "router -> model server" if use_router else "model server directly"
    print(
        f"EfficientNet-Lite0 {IMAGE_SIZE}x{IMAGE_SIZE}, {len(payloads)} JPEG payloads of 640x480 "
        f"(mean {np.mean([len(p) for p in payloads]) / 1024:.0f} KiB), {cpu_count()} cores, batch {args.batch_size}, "
        f"HTTP via {path}, {clients} clients, {args.seconds:g} s per measurement"
    )

    workdir = Path(tempfile.mkdtemp(prefix="serve-bench-", dir=CACHE))
    try:
        endpoint = (
            router_endpoint(tar_path, workdir)
            if use_router
            else direct_endpoint(tar_path, args.batch_size, workdir / "server.log")
        )
        with endpoint as url:
            asyncio.run(closed_loop(url, payloads, clients, 2.0))  # warm connections and arenas
            local_rates, http_rates = [], []
            for round_ in range(args.rounds):
                local_rates.append(in_process(classifier, payloads, args.seconds, args.batch_size))
                rate, failures = asyncio.run(closed_loop(url, payloads, clients, args.seconds))
                if failures:
                    raise SystemExit(f"{failures} HTTP requests failed during the saturated run")
                http_rates.append(rate)
                print(f"round {round_ + 1}: in-process {local_rates[-1]:.1f} images/s, HTTP {rate:.1f} images/s")
            local, http = max(local_rates), max(http_rates)
            latencies, failures = asyncio.run(open_loop(url, payloads, http / 2, args.seconds))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    p50, p99 = np.percentile(latencies * 1000, [50, 99])
    print(f"in-process (decode + preprocess + ORT):  {local:8.1f} images/s")
    print(f"HTTP ({path}):  {http:8.1f} images/s")
    print(
        f"at half load ({http / 2:.1f} req/s, open loop, {len(latencies)} requests, {failures} failed): "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print(f"ratio {http / local:.3f}")


if __name__ == "__main__":
    main()
