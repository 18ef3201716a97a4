"""Load test: run-time parsing, SLO checks, and real Locust runs against the local stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from distracted_driver.loadtest import SLO, LoadTestSummary, find_capacity
from distracted_driver.loadtest.locust_run import parse_run_time, read_summary
from distracted_driver.loadtest.run import SLO_FILE, _over_limit

ROOT = Path(__file__).resolve().parents[1]


def summary(requests=100, failures=0, p50=10, p95=20, p99=30, rps=50.0) -> LoadTestSummary:
    return LoadTestSummary(
        users=4,
        requests=requests,
        failures=failures,
        rps=rps,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        avg_ms=p50,
        max_ms=p99,
    )


@pytest.mark.parametrize("text, seconds", [("20s", 20), ("1m30s", 90), ("2m", 120), ("1h", 3600), ("45", 45), (7, 7)])
def test_parse_run_time(text, seconds):
    assert parse_run_time(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0s", "2h", "10x", "-5"])
def test_parse_run_time_refuses(text):
    with pytest.raises(ValueError):
        parse_run_time(text)


def test_slo_file_loads_and_judges():
    slo = SLO.load(SLO_FILE)
    assert 0 < slo.max_failure_ratio <= 0.05 and slo.p50_ms < slo.p95_ms < slo.p99_ms
    assert slo.misses(summary()) == []
    misses = slo.misses(summary(failures=50, p50=slo.p50_ms + 1, p99=slo.p99_ms + 1))
    assert [m.split(":")[0] for m in misses] == ["failure ratio", "p50", "p99"]
    assert slo.misses(summary(requests=0))[0].startswith("requests")


def test_slo_file_with_unknown_key_is_refused(tmp_path):
    (tmp_path / "slo.toml").write_text("[slo]\np50 = 3\n")
    with pytest.raises(ValueError, match="unknown SLO keys"):
        SLO.load(tmp_path / "slo.toml")


def test_capacity_step_limits():
    slo = SLO(p99_ms=100)
    assert _over_limit(summary(p99=99), slo, 0.01) == ""
    assert _over_limit(summary(p99=101), slo, 0.01).startswith("p99")
    assert _over_limit(summary(failures=2), slo, 0.01).startswith("failure ratio")
    assert _over_limit(summary(requests=0), slo, 0.01) == "no request completed"


# --- real Locust against the real local stack ----------------------------------------


def inv(stack, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "DD_ROOT": str(stack.settings.root)}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
        env=env,
        cwd=stack.settings.root,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_inv_loadtest_passes_and_writes_a_report(api_stack, tmp_path, monkeypatch):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        frame = np.random.default_rng(i).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        cv2.imwrite(str(images / f"img_{i}.jpg"), frame)
    monkeypatch.setenv("DD_LOADTEST_IMAGES", str(images))
    result = inv(api_stack, "loadtest", "--users", "4", "--spawn-rate", "4", "--run-time", "5s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all SLOs met" in result.stdout and "requests/s" in result.stdout
    report = Path(result.stdout.split("report: ")[1].split()[0])
    assert report.parent == api_stack.settings.root / "reports" / "loadtest"
    for name in ("locust_stats.csv", "locust_stats_history.csv", "report.html", "timeline.png", "summary.json"):
        assert (report / name).stat().st_size > 0, name
    stats = read_summary(report, users=4)
    assert stats.requests >= 20 and stats.failures == 0 and stats.rps > 0
    assert json.loads((report / "summary.json").read_text())["passed"] is True


@pytest.mark.slow
def test_inv_loadtest_exits_nonzero_naming_the_missed_slo(api_stack, tmp_path):
    strict = tmp_path / "slo.toml"
    strict.write_text(
        "[slo]\nmax_failure_ratio = 0.01\np50_ms = 0.001\np95_ms = 100000\np99_ms = 100000\nmin_requests = 1\n"
    )
    result = inv(api_stack, "loadtest", "--users", "2", "--spawn-rate", "2", "--run-time", "3s", "--slo", str(strict))
    assert result.returncode == 1
    assert "SLO missed" in result.stderr and "p50:" in result.stderr and "p99" not in result.stderr


@pytest.mark.slow
def test_find_capacity_steps_and_autoscaling_target(api_stack):
    result = find_capacity(
        api_stack.settings,
        start_users=1,
        step_users=3,
        max_users=4,
        step_time="3s",
        slo=SLO(p99_ms=10_000),
        progress=lambda line: None,
    )
    assert [s["users"] for s in result.steps] == [1, 4]
    assert all(s["passed"] for s in result.steps) and "max-users" in result.stop_reason
    assert result.max_rps == max(s["rps"] for s in result.steps) > 0
    assert result.instances == 1
    assert result.target_invocations_per_instance == pytest.approx(result.max_rps * 0.5 * 60)
    assert (result.report_dir / "capacity.png").exists() and (result.report_dir / "capacity.json").exists()
