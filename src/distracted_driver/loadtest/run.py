"""One SLO-gated load test against the API, and the capacity search built from such runs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.fsutil import write_json_atomic
from distracted_driver.gateway import daemon, gateway_status
from distracted_driver.hosting import open_hosting
from distracted_driver.loadtest.locust_run import LOCUSTFILE, LoadTestError, LoadTestSummary, parse_run_time, run_locust
from distracted_driver.loadtest.report import plot_capacity, plot_history
from distracted_driver.loadtest.slo import SLO

SLO_FILE = LOCUSTFILE.parent / "slo.toml"


@dataclass
class Target:
    host: str
    api_key: str | None


@dataclass
class LoadTestResult:
    summary: LoadTestSummary
    misses: list[str]
    report_dir: Path

    @property
    def passed(self) -> bool:
        return not self.misses

    def report_lines(self) -> list[str]:
        return [self.summary.line(), f"report: {self.report_dir}"] + (["all SLOs met"] if self.passed else [])


def resolve_target(settings: Settings, host: str | None = None, api_key: str | None = None) -> Target:
    """The URL and key to load: given ones, else the local API's (``inv api.status``)."""
    if host:
        if api_key is None:
            api_key = os.environ.get("DD_API_KEY")
        if api_key is None:
            local = daemon.key_store(settings).first()
            api_key = local["value"] if local else None
        return Target(host.rstrip("/"), api_key)

    status = gateway_status(settings)
    if not status["running"]:
        raise LoadTestError("the local API is not running: start it with `inv api.up`, or pass --host URL")
    return Target(status["url"], api_key or status["api_key"])


def default_images(settings: Settings) -> Path | None:
    """The sample test images when the demo made them (the locustfile draws frames otherwise)."""
    directory = Path(os.environ.get("DD_LOADTEST_IMAGES") or Path(settings.work_dir) / "sample" / "imgs" / "test")
    return directory if directory.is_dir() else None


def new_report_dir(settings: Settings, kind: str = "loadtest") -> Path:
    base = Path(settings.root) / "reports" / kind
    stamp = time.strftime("%Y%m%d-%H%M%S")
    directory, n = base / stamp, 1
    while directory.exists():
        n += 1
        directory = base / f"{stamp}-{n}"
    directory.mkdir(parents=True)
    return directory


def run_loadtest(
    settings: Settings,
    users: int = 8,
    spawn_rate: float = 4,
    run_time: str | int = "20s",
    host: str | None = None,
    api_key: str | None = None,
    slo: SLO | None = None,
    report_dir: Path | None = None,
    stop_timeout_s: int = 5,
) -> LoadTestResult:
    """Locust headless against the API, its report folder, and the SLO verdict."""
    seconds = parse_run_time(run_time)
    target = resolve_target(settings, host, api_key)
    slo = slo or SLO.load(SLO_FILE)
    report_dir = report_dir or new_report_dir(settings)
    summary = run_locust(
        target.host,
        users,
        spawn_rate,
        seconds,
        report_dir,
        api_key=target.api_key,
        images_dir=default_images(settings),
        stop_timeout_s=stop_timeout_s,
    )
    misses = slo.misses(summary)
    plot_history(
        report_dir / "locust_stats_history.csv",
        report_dir / "timeline.png",
        title=f"{target.host} — {users} users, {seconds} s",
    )
    write_json_atomic(
        report_dir / "summary.json",
        {
            "host": target.host,
            "users": users,
            "spawn_rate": spawn_rate,
            "run_time_s": seconds,
            "summary": summary.to_dict(),
            "slo": slo.__dict__,
            "misses": misses,
            "passed": not misses,
        },
    )
    return LoadTestResult(summary, misses, report_dir)


@dataclass
class CapacityResult:
    steps: list[dict] = field(default_factory=list)  # users, rps, p99_ms, failure_ratio, passed, reason
    max_rps: float = 0.0
    users_at_max: int = 0
    instances: int = 1
    safety_factor: float = 0.5
    stop_reason: str = ""
    report_dir: Path | None = None

    @property
    def rps_per_instance(self) -> float:
        return self.max_rps / max(self.instances, 1)

    @property
    def target_invocations_per_instance(self) -> float:
        """SageMaker's guidance: max RPS per instance × safety factor × 60 (a per-minute metric)."""
        return self.rps_per_instance * self.safety_factor * 60

    def report_lines(self) -> list[str]:
        return [
            f"stopped: {self.stop_reason}",
            f"highest sustainable: {self.max_rps:.1f} requests/s at {self.users_at_max} users "
            f"({self.rps_per_instance:.1f} per instance, {self.instances} instance(s))",
            f"autoscaling target (SageMakerVariantInvocationsPerInstance, per minute): "
            f"{self.rps_per_instance:.1f} x {self.safety_factor} x 60 = {self.target_invocations_per_instance:.0f}",
            f"report: {self.report_dir}",
        ]

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "max_rps": self.max_rps,
            "users_at_max": self.users_at_max,
            "instances": self.instances,
            "rps_per_instance": self.rps_per_instance,
            "safety_factor": self.safety_factor,
            "target_invocations_per_instance": self.target_invocations_per_instance,
            "stop_reason": self.stop_reason,
        }


def find_capacity(
    settings: Settings,
    start_users: int = 2,
    step_users: int = 2,
    max_users: int = 32,
    step_time: str | int = "15s",
    host: str | None = None,
    api_key: str | None = None,
    slo: SLO | None = None,
    instances: int | None = None,
    safety_factor: float = 0.5,
    max_failure_ratio: float = 0.01,
    progress=print,
) -> CapacityResult:
    """Add users step by step until failures pass 1% or p99 passes its SLO; the last good step's RPS is capacity."""
    if not 0 < safety_factor <= 1:
        raise ValueError("the safety factor must be within (0, 1]")
    if start_users < 1 or step_users < 1 or max_users < start_users:
        raise ValueError("need 1 <= start_users <= max_users and step_users >= 1")
    seconds = parse_run_time(step_time)
    target = resolve_target(settings, host, api_key)
    slo = slo or SLO.load(SLO_FILE)
    result = CapacityResult(
        instances=instances or _instances(settings, host),
        safety_factor=safety_factor,
        report_dir=new_report_dir(settings, "capacity"),
    )
    for users in range(start_users, max_users + 1, step_users):
        summary = run_locust(
            target.host,
            users,
            spawn_rate=users,
            run_time_s=seconds,
            out_dir=result.report_dir / f"users-{users:03d}",
            api_key=target.api_key,
            images_dir=default_images(settings),
        )
        reason = _over_limit(summary, slo, max_failure_ratio)
        result.steps.append(
            {
                "users": users,
                "rps": summary.rps,
                "p50_ms": summary.p50_ms,
                "p99_ms": summary.p99_ms,
                "failure_ratio": summary.failure_ratio,
                "passed": not reason,
                "reason": reason,
            }
        )
        progress(f"  {summary.line()}" + (f"  → stop: {reason}" if reason else ""))
        if reason:
            result.stop_reason = f"{users} users: {reason}"
            break
        if summary.rps > result.max_rps:
            result.max_rps, result.users_at_max = summary.rps, users
    else:
        result.stop_reason = f"reached --max-users {max_users} within the limits"
    plot_capacity(result.steps, result.report_dir / "capacity.png", slo.p99_ms)
    write_json_atomic(result.report_dir / "capacity.json", {"host": target.host, **result.to_dict()})
    return result


def _over_limit(summary: LoadTestSummary, slo: SLO, max_failure_ratio: float) -> str:
    if summary.requests == 0:
        return "no request completed"
    if summary.failure_ratio > max_failure_ratio:
        top = summary.top_failures[0]["error"] if summary.top_failures else ""
        return f"failure ratio {summary.failure_ratio:.2%} > {max_failure_ratio:.0%} ({top})"
    if summary.p99_ms > slo.p99_ms:
        return f"p99 {summary.p99_ms:.0f} ms > {slo.p99_ms:.0f} ms"
    return ""


def _instances(settings: Settings, host: str | None) -> int:
    """Instances behind the local endpoint (1 when that cannot be told, e.g. for a remote --host)."""
    if host:
        return 1
    try:
        return max(open_hosting(settings).status().instance_count, 1)
    except Exception:  # the hosting status is informative here, never a reason to fail the search
        return 1
