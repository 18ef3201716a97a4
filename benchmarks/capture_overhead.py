"""What data capture costs a client: latency through the endpoint with capture at 0% and at 100%, same run.

    .venv/bin/python benchmarks/capture_overhead.py [--seconds 15] [--rounds 3] [--clients 24]

The endpoint, model and payloads are those of ``benchmarks/serve_vs_limit.py``
(EfficientNet-Lite0 at 224x224, one instance behind the local runtime's router,
640x480 JPEG frames), imported from it. Capture writes into the run's own
local bucket, in SageMaker's layout, with the runtime's default writer limits.

- **saturated**: a closed loop of ``--clients`` concurrent requests with
  capture at 0% and at 100%, in alternating rounds; each side keeps its best;
  and the runtime process's CPU time per request answered (router and capture
  writer, independent of the machine's load).
- **latency**: an open loop at half the 0% saturated rate, alternating 0% and
  100% for ``--rounds`` rounds each; every latency of a side is pooled; p50
  and p99 of each.
- what the writer did at 100%: records written, dropped (queue full), lost,
  against the requests answered while capturing, read back with the reader.

All traffic is on 127.0.0.1 and bounded in time. Draws the latency
distributions to ``reports/capture_overhead.png``. Last line: ``ratio X``
(p99 at 100% ÷ p99 at 0%); the target is that the client sees no measurable
change (within the run-to-run noise of the 0% rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_vs_limit as serving  # noqa: E402  (the serving benchmark: model, payloads, load loops, endpoint)

from distracted_driver.monitor.capture import iter_capture_records  # noqa: E402

SIDES = (0, 100)  # capture percent


def _plot(latencies: dict[int, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 5))
    for percent, seconds in latencies.items():
        ms = np.sort(seconds * 1000)
        p50, p99 = np.percentile(ms, [50, 99])
        ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms),
                label=f"capture {percent}%: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(ms)} requests)")
    ax.set_xlabel("client latency (ms)")
    ax.set_ylabel("share of requests answered within")
    ax.set_title("Latency through the local endpoint, data capture off and at 100% (open loop, same run)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of 0% and 100% capture")
    parser.add_argument("--clients", type=int, default=24, help="concurrent requests when saturating")
    parser.add_argument("--images", type=int, default=64, help="distinct payloads")
    parser.add_argument("--plot", type=Path, default=serving.ROOT / "reports" / "capture_overhead.png")
    args = parser.parse_args()

    serving.CACHE.mkdir(parents=True, exist_ok=True)
    tar_path = serving.build_artifact(serving.CACHE / serving.VERSION)
    payloads = serving.sample_payloads(args.images)
    print(f"EfficientNet-Lite0 {serving.IMAGE_SIZE}x{serving.IMAGE_SIZE}, {len(payloads)} JPEG payloads of 640x480 "
          f"(mean {np.mean([len(p) for p in payloads]) / 1024:.0f} KiB), one instance, {args.clients} clients, "
          f"{args.seconds:g} s per measurement, {args.rounds} rounds per side")

    workdir = Path(tempfile.mkdtemp(prefix="cap-", dir=serving.CACHE))  # short: AF_UNIX paths are at most 107 bytes
    try:
        with serving.router_hosting(tar_path, workdir) as hosting:
            url = f"{hosting.status()['runtime_url'].rstrip('/')}/endpoints/{hosting.settings.endpoint_name}/invocations"
            hosting.set_capture(100)
            asyncio.run(serving.closed_loop(url, payloads, args.clients, 2.0))  # warm: connections, arenas, writer

            runtime = psutil.Process(hosting.status()["runtime"]["pid"])
            rates, cpu_ms = {percent: [] for percent in SIDES}, {percent: [] for percent in SIDES}
            for round_ in range(2):
                for percent in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                    hosting.set_capture(percent)
                    cpu = sum(runtime.cpu_times()[:2])
                    rate, failures = asyncio.run(serving.closed_loop(url, payloads, args.clients, args.seconds))
                    if failures:
                        raise SystemExit(f"{failures} requests failed during a saturated run at {percent}% capture")
                    rates[percent].append(rate)
                    cpu_ms[percent].append(1000 * (sum(runtime.cpu_times()[:2]) - cpu) / (rate * args.seconds))
                print(f"saturated round {round_ + 1}: capture 0% {rates[0][-1]:.1f} requests/s, "
                      f"100% {rates[100][-1]:.1f} requests/s")

            rate = max(rates[0]) / 2
            latencies = {percent: [] for percent in SIDES}
            answered_at_100, failed = 0, 0
            before = hosting.status()["data_capture"]["stats"]
            for round_ in range(args.rounds):
                for percent in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                    hosting.set_capture(percent)
                    seconds, failures = asyncio.run(serving.open_loop(url, payloads, rate, args.seconds))
                    latencies[percent].append(seconds)
                    failed += failures
                    if percent == 100:
                        answered_at_100 += len(seconds)
                    p50, p99 = np.percentile(seconds * 1000, [50, 99])
                    print(f"open loop round {round_ + 1}, capture {percent:3d}%: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                          f"({len(seconds)} requests, {failures} failed)")
            hosting.set_capture(0)
            stats = hosting.status()["data_capture"]["stats"]
            read_back = sum(1 for _ in iter_capture_records(hosting.storage, hosting.settings.capture_prefix,
                                                            hosting.settings.endpoint_name))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    pooled = {percent: np.concatenate(latencies[percent]) for percent in SIDES}
    _plot(pooled, args.plot)
    written = stats["written"] - before["written"]
    dropped = stats["dropped"] - before["dropped"]
    print(f"saturated: capture 0% {max(rates[0]):.1f} requests/s, 100% {max(rates[100]):.1f} requests/s "
          f"(ratio {max(rates[100]) / max(rates[0]):.3f})")
    print(f"runtime process CPU per request: capture 0% {np.median(cpu_ms[0]):.2f} ms, 100% "
          f"{np.median(cpu_ms[100]):.2f} ms (capture adds {np.median(cpu_ms[100]) - np.median(cpu_ms[0]):.2f} ms, "
          f"in the writer thread)")
    noise = [float(np.percentile(s * 1000, 99)) for s in latencies[0]]
    for percent in SIDES:
        p50, p99 = np.percentile(pooled[percent] * 1000, [50, 99])
        print(f"open loop at {rate:.1f} requests/s, capture {percent:3d}%: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"({len(pooled[percent])} requests)")
    print(f"p99 of the 0% rounds alone ranged {min(noise):.1f}..{max(noise):.1f} ms (the run's noise); {failed} failed")
    print(f"capture at 100% during the open loop: {answered_at_100} answered, {written} written, {dropped} dropped "
          f"(queue full), {stats['lost']} lost; {read_back} records read back in all (warm-up and saturated rounds "
          f"included)")
    p50_ratio = np.percentile(pooled[100], 50) / np.percentile(pooled[0], 50)
    p99_ratio = np.percentile(pooled[100], 99) / np.percentile(pooled[0], 99)
    print(f"plot: {args.plot}")
    print(f"p50 ratio {p50_ratio:.3f}")
    print(f"ratio {p99_ratio:.3f}")


if __name__ == "__main__":
    main()
