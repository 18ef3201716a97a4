"""What the API hop costs: gateway + Lambda handler + router + model server, versus router + model server.

    .venv/bin/python benchmarks/gateway_cost.py [--seconds 15] [--rounds 2] [--clients 24]

One local endpoint (one instance of EfficientNet-Lite0 at 224x224, the
serving benchmark's model) and, in front of it, the local API gateway running
the real Lambda handler (boto3 ``invoke_endpoint`` to the local runtime). The
load, the payloads (640x480 JPEG frames), the endpoint and the model are
those of ``benchmarks/serve_vs_limit.py``, imported from it, so "router only"
here is that benchmark's HTTP figure measured again in the same run.

- **saturated**: a closed loop of ``--clients`` concurrent requests, router
  only (``POST {runtime}/endpoints/{name}/invocations``) and through the API
  (``POST {api}/predict``), in alternating rounds; each keeps its best round.
- **gateway CPU**: CPU seconds of the gateway process per request answered
  (what the hop takes from the cores the model server also needs).
- **half load**: an open loop at half the API's saturated throughput, on both
  paths; p50 and p99.

The API runs without key checking here (the serving benchmark's client sends
no ``x-api-key``); the key check is one dictionary lookup. Its throttle is set
far above the load. Last line: ``ratio X`` (through the API ÷ router only,
requests/s); the target is at least 0.9.
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

from distracted_driver.config import Settings  # noqa: E402
from distracted_driver.gateway import UsagePlan, start_gateway, stop_gateway  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of router-only and API")
    parser.add_argument("--clients", type=int, default=24, help="concurrent requests when saturating")
    parser.add_argument("--images", type=int, default=64, help="distinct payloads")
    args = parser.parse_args()

    serving.CACHE.mkdir(parents=True, exist_ok=True)
    tar_path = serving.build_artifact(serving.CACHE / serving.VERSION)
    payloads = serving.sample_payloads(args.images)
    print(
        f"EfficientNet-Lite0 {serving.IMAGE_SIZE}x{serving.IMAGE_SIZE}, {len(payloads)} JPEG payloads of 640x480, "
        f"one instance, {args.clients} clients, {args.seconds:g} s per measurement"
    )

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-", dir=serving.CACHE))
    api_settings = Settings(root=workdir / "api")
    try:
        with serving.router_endpoint(tar_path, workdir / "endpoint") as invocations_url:
            runtime_url, _, rest = invocations_url.partition("/endpoints/")
            endpoint_name = rest.split("/")[0]
            api_settings = Settings(root=workdir / "api", endpoint_name=endpoint_name)
            status = start_gateway(
                api_settings, runtime_url=runtime_url, port=0, plan=UsagePlan(rate=1e6, burst=10**6, require_key=False)
            )
            api_url = status["predict_url"]
            for url in (invocations_url, api_url):  # warm connections, arenas and the boto3 client
                asyncio.run(serving.closed_loop(url, payloads, args.clients, 2.0))
            gateway = psutil.Process(status["pid"])
            router_rates, api_rates, api_cpu_ms = [], [], []
            sides = [(invocations_url, router_rates), (api_url, api_rates)]
            for round_ in range(args.rounds):
                for url, rates in sides if round_ % 2 == 0 else sides[::-1]:  # alternate who goes first
                    cpu = sum(gateway.cpu_times()[:2])
                    rate, failures = asyncio.run(serving.closed_loop(url, payloads, args.clients, args.seconds))
                    if failures:
                        raise SystemExit(f"{failures} requests failed during a saturated run against {url}")
                    rates.append(rate)
                    if url == api_url:
                        api_cpu_ms.append(1000 * (sum(gateway.cpu_times()[:2]) - cpu) / (rate * args.seconds))
                print(
                    f"round {round_ + 1}: router only {router_rates[-1]:.1f} requests/s, "
                    f"through the API {api_rates[-1]:.1f} requests/s"
                )
            router, api = max(router_rates), max(api_rates)
            half = api / 2
            latency = {}
            for name, url in (("router only", invocations_url), ("through the API", api_url)):
                seconds, failures = asyncio.run(serving.open_loop(url, payloads, half, args.seconds))
                latency[name] = (*np.percentile(seconds * 1000, [50, 99]), len(seconds), failures)
    finally:
        stop_gateway(api_settings)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"saturated, router only (router -> model server):          {router:8.1f} requests/s")
    print(f"saturated, through the API (gateway -> handler -> router): {api:8.1f} requests/s")
    for name, (p50, p99, count, failures) in latency.items():
        print(
            f"half load ({half:.1f} req/s, open loop), {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({count} requests, {failures} failed)"
        )
    print(f"gateway process CPU per request (aiohttp + proxy event + handler + boto3): {np.median(api_cpu_ms):.2f} ms")
    print(f"gateway hop costs {100 * (1 - api / router):.1f}% of throughput")
    print(f"ratio {api / router:.3f}")


if __name__ == "__main__":
    main()
