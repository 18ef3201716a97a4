"""What data capture costs a client: latency through the endpoint with capture at 0% and at 100%, same run.

    .venv/bin/python benchmarks/capture_overhead.py [--seconds 120] [--slice 1] [--clients 24]

The endpoint, model and payloads are those of ``benchmarks/serve_vs_limit.py``
(EfficientNet-Lite0 at 224x224, one instance behind the local runtime's router,
640x480 JPEG frames), imported from it. Capture writes into the run's own
local bucket, in SageMaker's layout, with the runtime's default writer limits.

- **latency**: one open loop at half the saturated rate for ``--seconds``,
  while capture is switched between 0% and 100% every ``--slice`` seconds
  (``inv deploy.capture``'s call); each request is counted on the side that
  was in force when it started (those started during a switch are left out).
  Interleaving this finely, a burst of load from elsewhere on a shared
  machine falls on both sides alike. p50 and p99 of each side.
- **saturated**: a closed loop of ``--clients`` concurrent requests at 0% and
  at 100%, in alternating rounds (each side keeps its best), and the runtime
  process's CPU time per request answered (router and capture writer; it does
  not depend on the machine's load).
- what the writer did: records written, dropped (queue full), lost, against
  the requests answered while capturing; everything is read back with the reader.

All traffic is on 127.0.0.1 and bounded in time. Draws the latency
distributions to ``reports/capture_overhead.png``. Last line: ``ratio X``
(p99 at 100% ÷ p99 at 0%); the target is no measurable change for the client.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_vs_limit as serving  # noqa: E402  (the serving benchmark: model, payloads, load loops, endpoint)

from distracted_driver.monitor.capture import iter_capture_records  # noqa: E402

SIDES = (0, 100)  # capture percent
SATURATED_ROUNDS = 2


def _plot(latencies: dict[int, np.ndarray], path: Path, slice_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 5))
    for percent, seconds in latencies.items():
        ms = np.sort(seconds * 1000)
        p50, p99 = np.percentile(ms, [50, 99])
        ax.plot(
            ms,
            np.arange(1, len(ms) + 1) / len(ms),
            label=f"capture {percent}%: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(ms)} requests)",
        )
    ax.set_xlabel("client latency (ms)")
    ax.set_ylabel("share of requests answered within")
    ax.set_title(f"Latency through the local endpoint, capture switched 0% / 100% every {slice_s:g} s (open loop)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def _interleaved(
    hosting, url: str, payloads: list[bytes], rate: float, seconds: float, slice_s: float
) -> tuple[dict[int, np.ndarray], int, int]:
    """The open loop with capture switched every ``slice_s``; ({percent: latencies}, failures, switches)."""
    state = {"percent": 0, "switches": 0}
    end = time.monotonic() + seconds

    async def switch() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(slice_s)
            percent = 100 - state["percent"]
            state["percent"] = None  # requests started meanwhile belong to neither side
            await asyncio.to_thread(hosting.set_capture, percent)
            state["percent"] = percent
            state["switches"] += 1

    switcher = asyncio.ensure_future(switch())
    latencies, tags, failures = await serving.tagged_open_loop(url, payloads, rate, seconds, lambda: state["percent"])
    switcher.cancel()
    tags = np.asarray([-1 if tag is None else tag for tag in tags])
    return {percent: latencies[tags == percent] for percent in SIDES}, failures, state["switches"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the interleaved latency measurement")
    parser.add_argument("--slice", type=float, default=1.0, help="seconds between switches of capture 0%% / 100%%")
    parser.add_argument("--saturated-seconds", type=float, default=10.0, help="length of each saturated round")
    parser.add_argument("--clients", type=int, default=24, help="concurrent requests when saturating")
    parser.add_argument("--images", type=int, default=64, help="distinct payloads")
    parser.add_argument("--plot", type=Path, default=serving.ROOT / "reports" / "capture_overhead.png")
    args = parser.parse_args()

    serving.CACHE.mkdir(parents=True, exist_ok=True)
    tar_path = serving.build_artifact(serving.CACHE / serving.VERSION)
    payloads = serving.sample_payloads(args.images)
    print(
        f"EfficientNet-Lite0 {serving.IMAGE_SIZE}x{serving.IMAGE_SIZE}, {len(payloads)} JPEG payloads of 640x480 "
        f"(mean {np.mean([len(p) for p in payloads]) / 1024:.0f} KiB), one instance, {args.clients} clients"
    )

    workdir = Path(tempfile.mkdtemp(prefix="cap-", dir=serving.CACHE))  # short: AF_UNIX paths are at most 107 bytes
    try:
        with serving.router_hosting(tar_path, workdir) as hosting:
            url = f"{hosting.status().runtime_url.rstrip('/')}/endpoints/{hosting.settings.endpoint_name}/invocations"
            hosting.set_capture(100)
            asyncio.run(serving.closed_loop(url, payloads, args.clients, 2.0))  # warm: connections, arenas, writer

            runtime = psutil.Process(hosting.status().details["runtime"]["pid"])
            rates, cpu_ms = {p: [] for p in SIDES}, {p: [] for p in SIDES}
            for round_ in range(SATURATED_ROUNDS):
                for percent in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                    hosting.set_capture(percent)
                    cpu = sum(runtime.cpu_times()[:2])
                    rate, failures = asyncio.run(
                        serving.closed_loop(url, payloads, args.clients, args.saturated_seconds)
                    )
                    if failures:
                        raise SystemExit(f"{failures} requests failed during a saturated run at {percent}% capture")
                    rates[percent].append(rate)
                    cpu_ms[percent].append(
                        1000 * (sum(runtime.cpu_times()[:2]) - cpu) / (rate * args.saturated_seconds)
                    )
                print(
                    f"saturated round {round_ + 1}: capture 0% {rates[0][-1]:.1f} requests/s, "
                    f"100% {rates[100][-1]:.1f} requests/s"
                )

            rate = max(rates[0]) / 2
            hosting.set_capture(0)
            before = hosting.status().data_capture["stats"]
            print(f"open loop at {rate:.1f} requests/s for {args.seconds:g} s, capture switched every {args.slice:g} s")
            latencies, failed, switches = asyncio.run(
                _interleaved(hosting, url, payloads, rate, args.seconds, args.slice)
            )
            hosting.set_capture(0)
            stats = hosting.status().data_capture["stats"]
            read_back = sum(
                1
                for _ in iter_capture_records(
                    hosting.storage, hosting.settings.capture_prefix, hosting.settings.endpoint_name
                )
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    _plot(latencies, args.plot, args.slice)
    print(
        f"saturated: capture 0% {max(rates[0]):.1f} requests/s, 100% {max(rates[100]):.1f} requests/s "
        f"(ratio {max(rates[100]) / max(rates[0]):.3f})"
    )
    print(
        f"runtime process CPU per request: capture 0% {np.median(cpu_ms[0]):.2f} ms, 100% "
        f"{np.median(cpu_ms[100]):.2f} ms (capture adds {np.median(cpu_ms[100]) - np.median(cpu_ms[0]):.2f} ms, "
        f"in the writer thread)"
    )
    for percent in SIDES:
        p50, p90, p99 = np.percentile(latencies[percent] * 1000, [50, 90, 99])
        print(
            f"capture {percent:3d}%: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms "
            f"({len(latencies[percent])} requests)"
        )
    print(
        f"{switches} switches, {failed} requests failed; during the open loop the writer wrote "
        f"{stats['written'] - before['written']} records, dropped {stats['dropped'] - before['dropped']} "
        f"(queue full), lost {stats['lost'] - before['lost']}; {read_back} records read back in all "
        "(warm-up and saturated rounds included)"
    )
    print(f"plot: {args.plot}")
    p50_ratio = np.percentile(latencies[100], 50) / np.percentile(latencies[0], 50)
    print(f"p50 ratio {p50_ratio:.3f}")
    print(f"ratio {np.percentile(latencies[100], 99) / np.percentile(latencies[0], 99):.3f}")


if __name__ == "__main__":
    main()
