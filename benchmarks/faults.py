"""Requests failed and seconds to recovery when a part of the local stack is killed (SIGKILL) under load,
and what hostile clients (malformed requests, slow sockets) get from each server.

    .venv/bin/python benchmarks/faults.py [--clients 4] [--instances 2] [--before 5] [--after 10] [--slow-sockets 200]

One local stack on loopback, as ``make demo`` leaves it: an endpoint of
``--instances`` model servers (EfficientNet-Lite0 at 224x224, the serving
benchmark's model) behind the local runtime's router, and the REST API (the
local API gateway running the real Lambda handler) in front, the runtime and
the gateway both programs of the state directory's supervisor. ``--clients``
threads post 640x480 JPEG frames to ``/predict`` back to back throughout.

Each fault in turn: the load runs ``--before`` seconds, one process is killed
with SIGKILL (a model server, then the runtime, then the gateway), and the
load goes on until the killed part is back and ``--after`` seconds more
(``--max-seconds`` at most). For each fault:

- **requests**: answered from the kill to the end of the window; **failed**:
  of those, the ones that were not a 200 (or got no answer);
- **client outage**: seconds from the kill to the end of the last failed
  request (0 when none failed): how long clients saw errors;
- **back after**: seconds from the kill until the killed part serves again (a
  replacement instance in service; a new runtime with the endpoint InService
  and all its instances; a new gateway process whose health check passes).

Then, for each server (the gateway, the runtime's invocation port, one model
server): the two requests aiohttp's parser refuses (``loadtest.hostile``)
and what came back, and ``--slow-sockets`` connections that send their
headers one byte a second while one client keeps posting to the API: how many
the server closed, after how long, and how many of the client's requests
failed meanwhile.

The tables are printed at the end; a timeline of every request around each
kill is drawn to ``reports/faults.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from serve_vs_limit import CACHE, VERSION, build_artifact, sample_payloads  # noqa: E402

from distracted_driver.config import Settings  # noqa: E402
from distracted_driver.gateway import UsagePlan, gateway_status, start_gateway, stop_gateway  # noqa: E402
from distracted_driver.hosting.base import AlarmThresholds, ModelSpec, TrafficRouting  # noqa: E402
from distracted_driver.hosting.local import LocalHosting  # noqa: E402
from distracted_driver.loadtest.hostile import malformed_requests, raw_exchange, slowloris  # noqa: E402
from distracted_driver.model.artifact import load_artifact  # noqa: E402
from distracted_driver.model.registry import Registry  # noqa: E402
from distracted_driver.storage import open_storage  # noqa: E402

ROOT = BENCHMARKS.parent
POLL_S = 0.05


@dataclass
class Request:
    started: float
    ended: float
    ok: bool


@dataclass
class Load:
    """``clients`` threads posting to the API back to back; every request's times and outcome are kept."""

    url: str
    api_key: str
    payloads: list[bytes]
    clients: int
    max_seconds: float
    done: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.clients)]

    def __enter__(self) -> Load:
        self._deadline = time.monotonic() + self.max_seconds
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, offset: int) -> None:
        session = requests.Session()
        headers = {"x-api-key": self.api_key, "Content-Type": "image/jpeg"}
        i = offset
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            started = time.monotonic()
            try:
                ok = (
                    session.post(
                        self.url, data=self.payloads[i % len(self.payloads)], headers=headers, timeout=30
                    ).status_code
                    == 200
                )
            except requests.RequestException:
                ok = False
                time.sleep(0.05)  # a refused connection fails at once: do not spin
            with self._lock:
                self.done.append(Request(started, time.monotonic(), ok))
            i += self.clients


@dataclass
class Fault:
    name: str
    kill: Callable[[], int]  # kills the process, returns its pid
    back: Callable[[int], bool]  # True once the part killed (that pid) is replaced and serves


@dataclass
class Outcome:
    fault: str
    killed_at: float
    requests: list[Request]
    back_after_s: float | None

    @property
    def after_kill(self) -> list[Request]:
        return [r for r in self.requests if r.ended >= self.killed_at]

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.after_kill)

    @property
    def outage_s(self) -> float:
        failures = [r.ended for r in self.after_kill if not r.ok]
        return max(failures) - self.killed_at if failures else 0.0


def faults(settings: Settings, hosting: LocalHosting, instances: int) -> list[Fault]:
    def instance_pids() -> list[int]:
        return [i["pid"] for i in hosting.status().instances if i["state"] == "in-service"]

    def kill(pid: int) -> int:
        os.kill(pid, signal.SIGKILL)
        return pid

    def endpoint_whole(exclude: int) -> bool:
        status = hosting.status()
        pids = [i["pid"] for i in status.instances if i["state"] == "in-service"]
        return status.status == "InService" and len(pids) == instances and exclude not in pids

    def runtime_back(old: int) -> bool:
        status = hosting.status()
        return (
            status.runtime_running
            and status.details["runtime"]["pid"] != old
            and status.status == "InService"
            and status.instance_count == instances
        )

    def gateway_back(old: int) -> bool:
        status = gateway_status(settings)
        return status["healthy"] and status["pid"] not in (None, old)

    return [
        Fault("model server", lambda: kill(instance_pids()[0]), endpoint_whole),
        Fault(
            "runtime (router; its instances keep running)",
            lambda: kill(hosting.status().details["runtime"]["pid"]),
            runtime_back,
        ),
        Fault("gateway (REST API)", lambda: kill(gateway_status(settings)["pid"]), gateway_back),
    ]


def run_fault(fault: Fault, load_args: dict, before_s: float, after_s: float, max_s: float) -> Outcome:
    with Load(**load_args, max_seconds=before_s + max_s + after_s) as load:
        time.sleep(before_s)
        killed_at = time.monotonic()
        pid = fault.kill()
        back_after = None
        while time.monotonic() - killed_at < max_s:
            if fault.back(pid):
                back_after = time.monotonic() - killed_at
                break
            time.sleep(POLL_S)
        time.sleep(after_s)
    print(f"  {fault.name}: killed pid {pid}; {len(load.done)} requests in the window", flush=True)
    return Outcome(fault.name, killed_at, list(load.done), back_after)


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| fault (SIGKILL under load) | requests after the kill | failed | client outage (s) | back after (s) |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        back = f"{o.back_after_s:.1f}" if o.back_after_s is not None else "not back"
        lines.append(f"| {o.fault} | {len(o.after_kill):,} | {o.failed:,} | {o.outage_s:.1f} | {back} |")
    return "\n".join(lines)


@dataclass
class Hostile:
    server: str
    malformed: list[str]  # "400 application/json" per malformed request
    sockets: int
    closed: int
    longest_held_s: float | None
    normal_ok: int
    normal_failed: int


def hostile_clients(servers: dict[str, tuple[str, str]], api: dict, payload: bytes, sockets: int) -> list[Hostile]:
    """``servers``: name -> (base URL, the path its requests go to)."""
    session = requests.Session()

    def predict() -> bool:
        return (
            session.post(
                api["predict_url"],
                data=payload,
                timeout=30,
                headers={"x-api-key": api["api_key"], "Content-Type": "image/jpeg"},
            ).status_code
            == 200
        )

    results = []
    for name, (url, path) in servers.items():
        answers = [raw_exchange(url, raw) for raw in malformed_requests(path).values()]
        malformed = [f"{status} {headers.get('content-type', '-').split(';')[0]}" for status, headers, _ in answers]
        slow = slowloris(url, predict, sockets=sockets, give_up_s=60)
        results.append(
            Hostile(name, malformed, sockets, slow.closed, slow.longest_held_s, slow.normal_ok, len(slow.normal_failed))
        )
        print(f"  {name}: {slow.closed} of {sockets} slow sockets closed", flush=True)
    return results


def hostile_table(results: list[Hostile]) -> str:
    lines = [
        "| server | malformed requests (duplicated Content-Type; Content-Length + chunked) | slow sockets closed | "
        "held at most (s) | API requests meanwhile | failed |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        held = f"{r.longest_held_s:.1f}" if r.longest_held_s is not None else "-"
        lines.append(
            f"| {r.server} | {'; '.join(r.malformed)} | {r.closed} of {r.sockets} | {held} | "
            f"{r.normal_ok + r.normal_failed} | {r.normal_failed} |"
        )
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outcomes), 1, figsize=(9, 2.4 * len(outcomes)), sharex=True)
    for ax, o in zip(axes, outcomes):
        for ok, colour, label in ((True, "tab:green", "200"), (False, "tab:red", "failed")):
            points = [(r.ended - o.killed_at, (r.ended - r.started) * 1000) for r in o.requests if r.ok is ok]
            if points:
                ax.scatter(*zip(*points), s=6, c=colour, label=label)
        ax.axvline(0, color="black", lw=1)
        if o.back_after_s is not None:
            ax.axvline(o.back_after_s, color="tab:blue", lw=1, ls="--", label="back")
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{o.fault}: {o.failed} of {len(o.after_kill)} failed", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds since the kill")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="client threads posting back to back (default 4)")
    parser.add_argument("--instances", type=int, default=2, help="model-server instances (default 2)")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of load before each kill (default 5)")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of load once the part is back (default 10)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="longest wait for a part to come back")
    parser.add_argument(
        "--slow-sockets", type=int, default=200, help="slow-header connections per server (default 200)"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "reports" / "faults.png", help="timeline PNG")
    args = parser.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    tar_path = build_artifact(CACHE / VERSION)
    payloads = sample_payloads(16)
    workdir = Path(tempfile.mkdtemp(prefix="faults-", dir="/tmp"))  # short: the control sockets live under it
    settings = Settings(
        root=workdir, bucket_dir=workdir / "bucket", state_dir=workdir / "state", work_dir=workdir / "work"
    )
    storage = open_storage(settings)
    key = f"{settings.models_prefix}/{VERSION}/output/model.tar.gz"
    storage.put_file(tar_path, key)
    Registry(storage, settings).register(VERSION, load_artifact(tar_path.parent / "model"))
    hosting = LocalHosting(settings, instance_threads=1, on_event=lambda event: None)
    outcomes, hostile = [], []
    try:
        deployed = hosting.deploy(
            ModelSpec(VERSION, key, args.instances),
            TrafficRouting(strategy="all-at-once", bake_seconds=0),
            AlarmThresholds(),
            smoke_images=payloads[:2],
        )
        assert deployed.outcome == "deployed", deployed
        api = start_gateway(settings, port=0, plan=UsagePlan(rate=10_000, burst=10_000))
        print(
            f"EfficientNet-Lite0 {args.instances} instance(s), {args.clients} clients posting to {api['predict_url']}",
            flush=True,
        )
        load_args = {
            "url": api["predict_url"],
            "api_key": api["api_key"],
            "payloads": payloads,
            "clients": args.clients,
        }
        for fault in faults(settings, hosting, args.instances):
            outcomes.append(run_fault(fault, load_args, args.before, args.after, args.max_seconds))
        status = hosting.status()
        servers = {
            "gateway": (api["url"], "/predict"),
            "runtime (invocation port)": (status.runtime_url, f"/endpoints/{settings.endpoint_name}/invocations"),
            "model server": (status.instances[0]["url"], "/invocations"),
        }
        hostile = hostile_clients(servers, api, payloads[0], args.slow_sockets)
    finally:
        stop_gateway(settings)
        hosting.delete()
        shutil.rmtree(workdir, ignore_errors=True)
    plot(outcomes, args.plot)
    print(f"\ntimeline: {args.plot}\n")
    print(table(outcomes))
    print()
    print(hostile_table(hostile))


if __name__ == "__main__":
    main()
