"""Run Locust headless as a subprocess, bounded in users and time, and read its CSV stats."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOCUSTFILE = Path(__file__).resolve().parents[3] / "load_test" / "locustfile.py"
MAX_USERS = 2000
MAX_RUN_TIME_S = 3600
CSV_PREFIX = "locust"


class LoadTestError(RuntimeError):
    """The load test could not run (not: it ran and missed an SLO)."""


@dataclass
class LoadTestSummary:
    """The Aggregated row of Locust's ``_stats.csv``; latencies in milliseconds."""

    users: int
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    max_ms: float
    top_failures: list[dict] = field(default_factory=list)

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def line(self) -> str:
        return (
            f"{self.users} users: {self.rps:.1f} requests/s, p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, "
            f"p99 {self.p99_ms:.0f} ms, failures {self.failures}/{self.requests} ({self.failure_ratio:.2%})"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "failure_ratio": self.failure_ratio}


def parse_run_time(value: str | int | float) -> int:
    """``20s``, ``1m30s``, ``2h`` or plain seconds → seconds, within the allowed bound."""
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+", text):
        seconds = int(text)
    else:
        match = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
        if not match or not any(match.groups()):
            raise ValueError(f"run time {value!r}: use e.g. 20s, 1m30s or 2h")
        hours, minutes, secs = (int(g or 0) for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not 1 <= seconds <= MAX_RUN_TIME_S:
        raise ValueError(f"run time must be within 1..{MAX_RUN_TIME_S} s, not {seconds} s")
    return seconds


def run_locust(
    host: str,
    users: int,
    spawn_rate: float,
    run_time_s: int,
    out_dir: Path,
    api_key: str | None = None,
    images_dir: Path | None = None,
    stop_timeout_s: int = 5,
    locustfile: Path = LOCUSTFILE,
) -> LoadTestSummary:
    """One headless run; its CSV, HTML and log land in ``out_dir``."""
    if not 1 <= users <= MAX_USERS:
        raise ValueError(f"users must be within 1..{MAX_USERS}")
    if spawn_rate <= 0:
        raise ValueError("spawn rate must be > 0")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{run_time_s}s",
        "--host",
        host,
        "--csv",
        str(out_dir / CSV_PREFIX),
        "--html",
        str(out_dir / "report.html"),
        "--stop-timeout",
        str(stop_timeout_s),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    env = {**os.environ, "DD_API_KEY": api_key or os.environ.get("DD_API_KEY", "")}
    if images_dir is not None:
        env["DD_LOADTEST_IMAGES"] = str(images_dir)
    with open(out_dir / "locust.log", "wb") as log:
        try:
            # Locust stops itself at run_time + stop_timeout; the margin covers its start-up.
            result = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=run_time_s + stop_timeout_s + 60
            )
        except subprocess.TimeoutExpired:
            raise LoadTestError(f"locust did not stop by itself; killed (log: {out_dir / 'locust.log'})") from None
    if result.returncode != 0:
        tail = "\n".join((out_dir / "locust.log").read_text(errors="replace").splitlines()[-15:])
        raise LoadTestError(f"locust exited with {result.returncode}:\n{tail}")
    return read_summary(out_dir, users)


def read_summary(out_dir: Path, users: int) -> LoadTestSummary:
    stats = out_dir / f"{CSV_PREFIX}_stats.csv"
    if not stats.exists():
        raise LoadTestError(f"locust wrote no {stats.name}; see {out_dir / 'locust.log'}")
    with open(stats, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["Name"] == "Aggregated"]
    if not rows:
        raise LoadTestError(f"{stats} has no Aggregated row")
    row = rows[0]
    return LoadTestSummary(
        users=users,
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        rps=_number(row["Requests/s"]),
        p50_ms=_number(row["50%"]),
        p95_ms=_number(row["95%"]),
        p99_ms=_number(row["99%"]),
        avg_ms=_number(row["Average Response Time"]),
        max_ms=_number(row["Max Response Time"]),
        top_failures=_failures(out_dir / f"{CSV_PREFIX}_failures.csv"),
    )


def _failures(path: Path, top: int = 5) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{"error": r["Error"], "count": int(r["Occurrences"])} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: -r["count"])[:top]


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # "N/A" when nothing was measured
        return 0.0
