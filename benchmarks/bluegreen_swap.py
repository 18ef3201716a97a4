"""Time from ``deploy.swap`` to all traffic on green, all-at-once, on the local runtime, under load.

    .venv/bin/python benchmarks/bluegreen_swap.py [--swaps 3] [--instances 1]

Two versions of the serving benchmark's model (EfficientNet-Lite0 224x224,
built and cached by ``serve_vs_limit.py``) are swapped back and forth with
``LocalHosting.deploy`` (ALL_AT_ONCE, no bake) while two boto3 clients keep
invoking the endpoint. Each swap reports its phases: prepare (artifact fetch
and unpack, endpoint config), provisioning (green processes up and healthy on
``/ping``, which includes the server's warm-up), smoke test, the switch, and
retiring blue. Last line: the median time from the call to all traffic on
green, and the number of failed requests (must be 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from serve_vs_limit import CACHE, VERSION, build_artifact, sample_payloads  # noqa: E402

from distracted_driver.config import Settings  # noqa: E402
from distracted_driver.hosting.base import AlarmThresholds, ModelSpec, TrafficRouting  # noqa: E402
from distracted_driver.hosting.local import LocalHosting  # noqa: E402
from distracted_driver.hosting.local.client import sagemaker_runtime_client  # noqa: E402
from distracted_driver.model import artifact as contract  # noqa: E402
from distracted_driver.model.registry import Registry  # noqa: E402
from distracted_driver.storage import open_storage  # noqa: E402

PHASES = ("prepare", "provisioning", "smoke_test", "swap_to_all_traffic_on_green", "retiring_blue", "client_total")


def versioned_copy(model_dir: Path, version: str, out_dir: Path) -> Path:
    """The same network under another model version: a new provenance, packed through the contract."""
    target = out_dir / version / "model"
    shutil.copytree(model_dir, target)
    provenance = json.loads((target / contract.PROVENANCE_FILE).read_text())
    (target / contract.PROVENANCE_FILE).write_text(json.dumps({**provenance, "model_version": version}))
    return contract.pack_artifact(target, target.parent / "model.tar.gz")


class Load:
    """Two boto3 clients invoking back to back (a short pause each), counting failures."""

    def __init__(self, url: str, endpoint: str, payloads: list[bytes]):
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.threads = [threading.Thread(target=self.run, args=(url, endpoint, payloads, n)) for n in range(2)]

    def run(self, url, endpoint, payloads, offset):
        client = sagemaker_runtime_client(url)
        i = offset
        while not self.stop.is_set():
            try:
                client.invoke_endpoint(
                    EndpointName=endpoint, ContentType="image/jpeg", Body=payloads[i % len(payloads)]
                )["Body"].read()
                self.ok += 1
            except Exception as error:
                self.failed += 1
                print(f"  request failed: {error}")
            i += 2
            time.sleep(0.05)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=3, help="all-at-once swaps to time (default 3)")
    parser.add_argument("--instances", type=int, default=1, help="instances per fleet (default 1)")
    args = parser.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    tar_path = build_artifact(CACHE / VERSION)
    payloads = sample_payloads(8)
    workdir = Path(tempfile.mkdtemp(prefix="swap-bench-", dir=CACHE))
    settings = Settings(
        root=workdir, bucket_dir=workdir / "bucket", state_dir=workdir / "state", work_dir=workdir / "work"
    )
    storage = open_storage(settings)
    registry = Registry(storage, settings)
    specs = []
    for version in ("swap-bench-blue", "swap-bench-green"):
        tar = versioned_copy(tar_path.parent / "model", version, workdir / "artifacts")
        key = registry.artifact_key(version)
        storage.put_file(tar, key)
        registry.register(version, contract.load_artifact(tar.parent / "model"))
        specs.append(ModelSpec(version, key, args.instances))

    hosting = LocalHosting(settings, on_event=lambda event: None)
    routing = TrafficRouting(strategy="all-at-once", wait_seconds=0, bake_seconds=0, termination_wait_seconds=0)
    rows = []
    try:
        created = hosting.deploy(specs[0], routing, AlarmThresholds(), smoke_images=payloads[:3])
        assert created.outcome == "deployed", created
        with Load(hosting.status().runtime_url, settings.endpoint_name, payloads) as load:
            time.sleep(1.0)
            for swap in range(args.swaps):
                spec = specs[(swap + 1) % 2]
                result = hosting.deploy(spec, routing, AlarmThresholds(), smoke_images=payloads[:3])
                assert result.outcome == "deployed", result
                rows.append(result.timings)
                print(
                    f"swap {swap + 1} to {spec.version}: "
                    + ", ".join(f"{p} {result.timings.get(p, 0):.2f} s" for p in PHASES)
                )
            time.sleep(1.0)
    finally:
        hosting.delete()
        shutil.rmtree(workdir, ignore_errors=True)
    median = statistics.median(r["swap_to_all_traffic_on_green"] for r in rows)
    print(f"requests during the swaps: {load.ok} answered, {load.failed} failed")
    print(
        f"swap to all traffic on green (all-at-once, {args.instances} instance(s)): median {median:.2f} s over {len(rows)} swaps"
    )


if __name__ == "__main__":
    main()
