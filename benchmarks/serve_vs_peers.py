"""Our serving stack against the bare fp32 loop and two serving frameworks: one run, same model, same images, same cores.

    make peers-env     # once: LitServe and BentoML, each in its own virtual environment
    .venv/bin/python benchmarks/serve_vs_peers.py [--seconds 15] [--rounds 2] [--clients 16]

The model is EfficientNet-Lite0 trained by the real training job (frozen backbone, 224 px) on the
default demo sample, exported to fp32 and int8, and judged by the gate, which picks the precision
served (cached under ``.work/benchmarks/serve_vs_peers``). The payloads are 640x480 JPEG frames of
the sample generator, the same bytes for every contender; every contender decodes and preprocesses
them with the artifact's own function (``model.inference.Classifier.prepare``) and runs the same
ONNX Runtime session options on the same file.

- **reference**: the bare fp32 in-process loop: for each batch of 8, decode + preprocess each image,
  then one ONNX Runtime run over all cores; no server, no client. Measured with our session options
  and with ONNX Runtime's defaults; the faster counts.
- **our endpoint**: the local runtime's router in front of one model server, serving the precision
  the gate chose (int8 when it scored within the tolerance), deployed through the gate's clearance and
  smoke test (``hosting.release``).
- **our REST API**: the local API gateway running the real Lambda handler, in front of that endpoint.
- **LitServe**, **BentoML**: minimal services (``benchmarks/peers/``) on the fp32 model, batching on
  (up to 8 requests, 5 ms), run from ``.venvs/litserve`` and ``.venvs/bentoml``.

Load (one aiohttp client process, loopback only, bounded in time and count): **saturation** is a
closed loop of ``--clients`` requests always in flight for ``--seconds``; **latency** is an open loop
at half of *our endpoint's* saturated rate, the same rate for every contender, for ``--seconds``
(p50/p99 of the answered requests). Failures are any answer but 200, and timeouts. Rounds alternate
the contenders so that load from elsewhere on the machine hits all alike; each keeps its best round.
CPU per image counts every process involved (servers, their workers, the load generator) over the
saturated run: on a machine shared with other jobs the cores' share varies from round to round, and
images per CPU-second compare the contenders whatever share they got. The ratios come last.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_vs_limit as serving  # noqa: E402  (the payloads)
from sample_channels import sample_channels  # noqa: E402

from distracted_driver.config import Settings  # noqa: E402
from distracted_driver.model.inference import Classifier  # noqa: E402
from distracted_driver.model.precision import FP32  # noqa: E402
from distracted_driver.system import cpu_count  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".work" / "benchmarks" / "serve_vs_peers"
PEERS = Path(__file__).resolve().parent / "peers"
BATCH = 8
BATCH_DELAY_MS = 5.0
REQUEST_TIMEOUT_S = 30.0
PLOT = ROOT / "reports" / "serve_vs_peers.png"
TARGETS = {"reference": 1.8, "peers": 1.5, "api": 0.9, "p99_ms": 50.0}


# --- the model: trained, exported, gated ------------------------------------------------------------


def gated_model(settings: Settings) -> str:
    """A model trained on the demo sample and passed by the gate in ``settings``' bucket (reused when there is one)."""
    from distracted_driver.data.channels import upload_channels
    from distracted_driver.model.registry import Registry, RegistryError
    from distracted_driver.storage import open_storage
    from distracted_driver.train.gate import judge
    from distracted_driver.train.runner import run_local_job

    storage = open_storage(settings)
    registry = Registry(storage, settings)
    try:
        job = registry.get("latest")["job"]
        record = registry.gate_record(job, registry.data_manifest_sha256() or "")
        if record and record["passed"]:
            return job
    except RegistryError:
        pass
    _, channels = sample_channels()
    upload_channels(storage, channels, settings.data_prefix)
    print("training the benchmark's model on the demo sample (once)", flush=True)
    job = run_local_job(settings, {}, stream=None)
    decision = judge(registry, job)
    if not decision.passed:
        raise SystemExit(f"the gate rejected the benchmark's model: {decision.reason}")
    return job


# --- contenders ---------------------------------------------------------------------------------------


def bare_loop(classifier: Classifier, predict, payloads: list[bytes], seconds: float) -> float:
    """Images/s of decode + preprocess + ``predict``, one batch after another, for about ``seconds``."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for first in range(0, len(payloads), BATCH):
            batch = np.stack([classifier.prepare(p) for p in payloads[first : first + BATCH]])
            predict(batch)
            done += len(batch)
    return done / (time.perf_counter() - started)


def reference_sessions(classifier: Classifier) -> dict:
    """The fp32 model's session with our options (no spin-waiting) and with ONNX Runtime's defaults:
    the reference is whichever loop runs faster."""
    import onnxruntime as ort

    from distracted_driver.model.artifact import INPUT_NAME, OUTPUT_NAME

    default = ort.InferenceSession(str(classifier.artifact.served_model_path), providers=["CPUExecutionProvider"])
    return {
        "our session options": classifier.predict,
        "ONNX Runtime's defaults": lambda batch: default.run([OUTPUT_NAME], {INPUT_NAME: batch})[0],
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PeerServer:
    """A peer's service in its own virtual environment, on a loopback port."""

    name: str
    python: Path
    script: Path
    model_dir: Path
    log_path: Path
    as_list: bool  # a batchable list input (BentoML) or one item (LitServe)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predict"

    def start(self, timeout_s: float = 180.0) -> None:
        if not self.python.exists():
            raise SystemExit(f"{self.python} is missing: build the peers' environments with `make peers-env`")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "DD_PEER_MODEL_DIR": str(self.model_dir),
            "DD_PEER_BATCH": str(BATCH),
            "DD_PEER_BATCH_DELAY_MS": str(BATCH_DELAY_MS),
        }
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(self.python), str(self.script), "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                probe = self.target([PROBE])
                request = urllib.request.Request(
                    self.url, data=probe.bodies[0], headers={"Content-Type": probe.content_type}
                )
                if json.loads(urllib.request.urlopen(request, timeout=5).read()):
                    return
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not answer within {timeout_s:g} s: {self.log_path.read_text()[-2000:]}")

    def target(self, payloads: list[bytes]) -> Target:
        return base64_json(self.url, payloads, self.as_list)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


PROBE = b""  # set to a real payload in main()


@contextlib.contextmanager
def our_stack(settings: Settings, job: str):
    """Our endpoint (released through the gate's clearance and smoke test) and the REST API in front of it."""
    from distracted_driver.gateway import UsagePlan, start_gateway, stop_gateway
    from distracted_driver.hosting.local import LocalHosting
    from distracted_driver.hosting.release import release

    hosting = LocalHosting(settings)
    try:
        done = release(settings, hosting, job)
        if done.result.outcome != "deployed" or not (done.smoke and done.smoke.passed):
            raise SystemExit(f"deploy failed: {done.result.outcome} {done.result.reason}")
        runtime_url = hosting.status().runtime_url.rstrip("/")
        status = start_gateway(
            settings, runtime_url=runtime_url, port=0, plan=UsagePlan(rate=1e6, burst=10**6, require_key=False)
        )
        yield f"{runtime_url}/endpoints/{settings.endpoint_name}/invocations", status["predict_url"], done.smoke
    finally:
        stop_gateway(settings)
        hosting.delete()


# --- measuring ----------------------------------------------------------------------------------------


def process_tree(pids: list[int]) -> list:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(pid)
            found += [parent, *parent.children(recursive=True)]
    return found


def cpu_seconds(processes: list) -> float:
    """User + system CPU seconds so far of ``processes`` (each once; gone ones count 0)."""
    total = 0.0
    for process in {process.pid: process for process in processes}.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def ours(root: Path) -> list[int]:
    """Our stack's processes: the runtime (router), its model servers and the gateway, all under ``root``."""
    return [p.pid for p in psutil.process_iter(["cmdline"]) if str(root) in " ".join(p.info["cmdline"] or [])]


@dataclass
class Result:
    name: str
    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # CPU per image: server side and load generator, every process
    failures: int = 0
    p50: float | None = None
    p99: float | None = None
    latency_failures: int = 0
    answered: int = 0

    @property
    def rate(self) -> float:
        return max(self.rates)

    @property
    def cpu(self) -> float:
        return min(self.cpu_ms)


@dataclass(frozen=True)
class Target:
    """Where to send, and each payload as that server takes it (encoded once, before any clock runs)."""

    url: str
    bodies: list[bytes]
    content_type: str


def raw_jpeg(url: str, payloads: list[bytes]) -> Target:
    return Target(url, payloads, "image/jpeg")


def base64_json(url: str, payloads: list[bytes], as_list: bool) -> Target:
    """The peers' JSON input: ``{"image": "<base64>"}`` (LitServe) or ``{"image": ["<base64>"]}`` (a batchable list)."""
    encoded = [base64.b64encode(p).decode() for p in payloads]
    return Target(url, [json.dumps({"image": [e] if as_list else e}).encode() for e in encoded], "application/json")


async def closed_loop(target: Target, clients: int, seconds: float) -> tuple[float, int]:
    """``clients`` requests always in flight for ``seconds``; (answers 200 per second, failures)."""
    done = failures = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        end = time.perf_counter() + seconds

        async def client(offset: int) -> None:
            nonlocal done, failures
            i = offset
            while time.perf_counter() < end:
                ok = await _post(session, target, i)
                done, failures = done + ok, failures + (not ok)
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        return done / (time.perf_counter() - started), failures


async def open_loop(target: Target, rate: float, seconds: float) -> tuple[np.ndarray, int]:
    """``rate * seconds`` requests started on schedule whatever the answers; (latencies of the 200s in s, failures)."""
    latencies, failures = [], 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512), timeout=timeout) as session:

        async def one(i: int) -> None:
            nonlocal failures
            started = time.perf_counter()
            if await _post(session, target, i):
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return np.asarray(latencies), failures


async def _post(session: aiohttp.ClientSession, target: Target, i: int) -> bool:
    try:
        async with session.post(
            target.url, data=target.bodies[i % len(target.bodies)], headers={"Content-Type": target.content_type}
        ) as response:
            await response.read()
            return response.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


def saturate(target: Target, clients: int, seconds: float) -> tuple[float, int]:
    return asyncio.run(closed_loop(target, clients, seconds))


def half_load(result: Result, target: Target, rate: float, seconds: float) -> None:
    latencies, failures = asyncio.run(open_loop(target, rate, seconds))
    result.answered, result.latency_failures = len(latencies), failures
    if len(latencies):
        result.p50, result.p99 = (float(v) for v in np.percentile(latencies * 1000, [50, 99]))


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def plot(results: list[Result], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distracted_driver.fsutil import atomic_path

    fig, (rate_ax, latency_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r.name for r in results]
    rate_ax.barh(names, [r.rate for r in results], color=["grey", "tab:blue", "tab:blue", "tab:orange", "tab:orange"])
    rate_ax.set_xlabel("images/s at saturation")
    rate_ax.invert_yaxis()
    served = [r for r in results if r.p99 is not None]
    y = np.arange(len(served))
    latency_ax.barh(y - 0.2, [r.p50 for r in served], height=0.4, label="p50")
    latency_ax.barh(y + 0.2, [r.p99 for r in served], height=0.4, label="p99")
    latency_ax.set_yticks(y, [r.name for r in served])
    latency_ax.invert_yaxis()
    latency_ax.set_xscale("log")
    latency_ax.set_xlabel("ms at half of our endpoint's saturation (log scale)")
    latency_ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    global PROBE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the contenders")
    parser.add_argument("--clients", type=int, default=16, help="requests in flight when saturating")
    parser.add_argument("--images", type=int, default=64, help="distinct payloads")
    parser.add_argument("--no-peers", action="store_true", help="leave LitServe and BentoML out")
    args = parser.parse_args()

    from distracted_driver.model.registry import Registry
    from distracted_driver.storage import open_storage

    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / "root"
    settings = Settings(root=root, endpoint_name="peers-bench")
    job = gated_model(settings)
    artifact = Registry(open_storage(settings), settings).fetch_artifact(job, CACHE / "artifact")
    payloads = serving.sample_payloads(args.images)
    PROBE = payloads[0]
    reference = Classifier(artifact.serving_as(FP32))
    started_load = load_average()
    print(
        f"model {job}: EfficientNet-Lite0 {artifact.preprocessing.input_size} px, serving {artifact.served_precision} "
        f"({artifact.serving.get('reason', 'fp32 only')}); {len(payloads)} JPEG payloads of 640x480; "
        f"{cpu_count()} cores; {args.clients} clients; {args.seconds:g} s per measurement; "
        f"load average {started_load}",
        flush=True,
    )

    workdir = CACHE / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    peers = (
        []
        if args.no_peers
        else [
            PeerServer(
                "LitServe (fp32, batching)",
                ROOT / ".venvs" / "litserve" / "bin" / "python",
                PEERS / "litserve_service.py",
                artifact.directory,
                workdir / "litserve.log",
                as_list=False,
            ),
            PeerServer(
                "BentoML (fp32, batching)",
                ROOT / ".venvs" / "bentoml" / "bin" / "python",
                PEERS / "bentoml_service.py",
                artifact.directory,
                workdir / "bentoml.log",
                as_list=True,
            ),
        ]
    )
    results = {"reference": Result("fp32 in-process loop (reference)")}
    try:
        for peer in peers:
            peer.start()
        with our_stack(settings, job) as (endpoint_url, api_url, smoke):
            print(f"endpoint smoke test: {smoke.summary()}", flush=True)
            targets = {
                "endpoint": raw_jpeg(endpoint_url, payloads),
                "api": raw_jpeg(api_url, payloads),
                **{f"peer{i}": p.target(payloads) for i, p in enumerate(peers)},
            }
            names = {
                "endpoint": f"our endpoint ({artifact.served_precision}, router)",
                "api": "our REST API (gateway -> handler -> router)",
                **{f"peer{i}": p.name for i, p in enumerate(peers)},
            }
            results.update({key: Result(names[key]) for key in targets})
            for target in targets.values():  # warm connections, arenas, batchers
                saturate(target, args.clients, 2.0)
            sessions = reference_sessions(reference)
            for predict in sessions.values():
                bare_loop(reference, predict, payloads[:BATCH], 0.5)
            reference_rates: dict[str, list[float]] = {name: [] for name in sessions}
            reference_cpu: dict[str, list[float]] = {name: [] for name in sessions}
            me = [psutil.Process()]  # the reference loop and the load generator
            servers = {
                "endpoint": ours(root),
                "api": ours(root),
                **{f"peer{i}": [p.proc.pid] for i, p in enumerate(peers)},
            }
            for round_ in range(args.rounds):
                order = ["reference", *targets]
                for key in order if round_ % 2 == 0 else order[::-1]:
                    if key == "reference":
                        for name, predict in sessions.items():
                            before = cpu_seconds(me)
                            rate = bare_loop(reference, predict, payloads, args.seconds)
                            reference_rates[name].append(rate)
                            reference_cpu[name].append(1000 * (cpu_seconds(me) - before) / (rate * args.seconds))
                        best = max(reference_rates, key=lambda name: reference_rates[name][-1])
                        results[key].rates.append(reference_rates[best][-1])
                        results[key].cpu_ms.append(reference_cpu[best][-1])
                    else:
                        processes = me + process_tree(servers[key])
                        before = cpu_seconds(processes)
                        rate, failures = saturate(targets[key], args.clients, args.seconds)
                        results[key].rates.append(rate)
                        results[key].cpu_ms.append(1000 * (cpu_seconds(processes) - before) / (rate * args.seconds))
                        results[key].failures += failures
                print(
                    f"round {round_ + 1} (load average {load_average()}): "
                    + ", ".join(f"{results[key].name} {results[key].rates[-1]:.1f}" for key in order),
                    flush=True,
                )
            half = results["endpoint"].rate / 2
            for key, target in targets.items():
                half_load(results[key], target, half, args.seconds)
    finally:
        for peer in peers:
            peer.stop()

    ordered = list(results.values())
    print(f"\nload average at the start {started_load}, at the end {load_average()}")
    print(
        "reference loop, best round: "
        + ", ".join(f"{name} {max(rates):.1f} images/s" for name, rates in reference_rates.items())
    )
    print(
        f"{'what':<44} {'images/s':>9} {'CPU ms/image':>13} {'failed':>7}   at {half:.1f} req/s: "
        f"{'p50 ms':>7} {'p99 ms':>7} {'failed':>7}"
    )
    for r in ordered:
        latency = (
            f"{r.p50:7.1f} {r.p99:7.1f} {r.latency_failures:7d}" if r.p99 is not None else f"{'-':>7} {'-':>7} {'-':>7}"
        )
        print(
            f"{r.name:<44} {r.rate:9.1f} {r.cpu:13.1f} {r.failures:7d}   "
            f"{'':>{len(f'at {half:.1f} req/s:') - 3}}{latency}"
        )
    print(f"plot: {plot(ordered, PLOT)}")
    endpoint, ref, api = results["endpoint"], results["reference"], results["api"]
    # Throughput ratios, then the same ratios in images per CPU-second (every process involved, the load
    # generator included): those hold when other jobs take a varying share of the cores.
    print(
        f"endpoint_vs_reference {endpoint.rate / ref.rate:.2f} (target >= {TARGETS['reference']}); "
        f"per CPU-second {ref.cpu / endpoint.cpu:.2f}"
    )
    for i, peer in enumerate(peers):
        other = results[f"peer{i}"]
        print(
            f"endpoint_vs_{peer.name.split()[0].lower()} {endpoint.rate / other.rate:.2f} "
            f"(target >= {TARGETS['peers']}); per CPU-second {other.cpu / endpoint.cpu:.2f}"
        )
    print(
        f"api_vs_endpoint {api.rate / endpoint.rate:.2f} (target >= {TARGETS['api']}); "
        f"per CPU-second {endpoint.cpu / api.cpu:.2f}"
    )
    print(f"endpoint_p99_ms_at_half_load {endpoint.p99:.1f} (target < {TARGETS['p99_ms']:g})")


if __name__ == "__main__":
    main()
