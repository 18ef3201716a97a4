"""The drift report sees drift, and only drift: real traffic through the real endpoint with capture on.

A real model (frozen EfficientNet-Lite0, trained by the pipeline on the sample generator's 26
drivers) is deployed with every request captured. Windows of traffic go through the endpoint:
new drivers drawn like training, then night, another camera angle and a new cabin. Each window
is judged by ``inv monitor.report --since`` on what the runtime captured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from monitor_support import images_of, send_images, wait_for_capture
from pipeline_support import INV, REPO, add_batch, environment, sample_batch, stop_stack

from distracted_driver.config import Settings
from distracted_driver.data.sample import generate_sample
from distracted_driver.pipeline.options import RunOptions
from distracted_driver.pipeline.run import run_pipeline

pytestmark = pytest.mark.slow

WINDOW = {"drivers": 10, "per_class": 1}  # 100 requests of 10 drivers no model has seen


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The sample's 26 drivers (5 in validation), trained and deployed at 224 px with 100 % capture."""
    root = tmp_path_factory.mktemp("drift")
    settings = Settings(root=root)
    add_batch(settings, sample_batch(root / "sample", drivers=26, per_class=2, seed=0))
    options = RunOptions(
        hyperparameters={"epochs": 15},
        convert={"val_drivers": 5},
        wait_seconds=1.0,
        bake_seconds=1.0,
        load_seconds=0.0,
        capture_percent=100,
    )
    record = run_pipeline(settings, options, log=lambda message: None, stream=None, progress=False)
    assert record.outcome == "deployed", record.reason
    try:
        yield settings
    finally:
        stop_stack(settings)


def _window(settings: Settings, root: Path, name: str, first_driver: int, shift: str | None = None):
    batch = root / name
    generate_sample(
        batch,
        drivers=WINDOW["drivers"],
        images_per_class_driver=WINDOW["per_class"],
        test_images=0,
        seed=4,
        first_driver=first_driver,
        shift=shift,
        progress=False,
    )
    paths = images_of(batch)
    since = send_images(settings, paths)
    wait_for_capture(settings, since, len(paths))
    return since, len(paths)


def _report(settings: Settings, since, *extra: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    done = subprocess.run(
        [sys.executable, str(INV), "monitor.report", "--since", since.isoformat(), *extra],
        cwd=REPO,
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    folder = next(
        (line.split("report: ", 1)[1] for line in done.stdout.splitlines() if line.startswith("report: ")), None
    )
    return done, json.loads((Path(folder) / "report.json").read_text()) if folder else None


def test_traffic_drawn_like_training_is_not_drift(live, tmp_path):
    since, sent = _window(live, tmp_path, "like-training", first_driver=100)
    done, report = _report(live, since)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["verdict"] == "no-drift" and report["drifted_checks"] == []
    assert report["records"] == {
        "requests": sent,
        "answered": sent,
        "refused": 0,
        "answered_by": {},
        "unreadable_lines": 0,
    }
    checks = report["checks"]
    assert checks["features"]["ratio"] < report["thresholds"]["max_frechet_ratio"]
    assert checks["predicted_classes"]["psi"] < 0.1
    assert done.stdout.splitlines()[1].startswith("no drift (features x")
    assert "refused" in done.stdout and "sharpness" in done.stdout  # the one-screen table


@pytest.mark.parametrize(
    "shift, first_driver, flagged",
    [
        ("night", 200, {"brightness", "contrast", "features", "confidence"}),
        ("angle", 300, {"confidence"}),
        ("cabin", 400, {"brightness", "confidence"}),
    ],
)
def test_a_shifted_window_is_drift_and_says_where(live, tmp_path, shift, first_driver, flagged):
    since, sent = _window(live, tmp_path, shift, first_driver=first_driver, shift=shift)
    done, report = _report(live, since)
    assert done.returncode == 3, done.stdout + done.stderr
    assert report["verdict"] == "drift" and report["records"]["answered"] == sent
    assert flagged <= set(report["drifted_checks"]), report["drifted_checks"]
    assert done.stderr.strip().splitlines()[-1].startswith("DRIFT in ")
    folder = Path(done.stdout.split("report: ", 1)[1].split()[0])
    assert report["files"] == {
        "summary": "summary.txt",
        "report": "report.json",
        "classes": "classes.png",
        "confidence": "confidence.png",
        "statistics": "statistics.png",
    }
    for name in ("classes.png", "confidence.png", "statistics.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG", name
    assert report["summary_line"] in (folder / "summary.txt").read_text()


def test_a_window_with_too_few_requests_is_not_judged_and_an_empty_one_is_an_error(live, tmp_path):
    batch = sample_batch(tmp_path / "few", drivers=1, per_class=1, seed=5, first_driver=500)
    since = send_images(live, images_of(batch))
    wait_for_capture(live, since, 10)
    done, report = _report(live, since)
    assert done.returncode == 1 and report["verdict"] == "too-few"
    assert "drift: not judged, 10 answered of 10 captured requests" in done.stderr
    later = since.replace(year=since.year + 1)
    nothing, _ = _report(live, later)
    assert nothing.returncode == 1 and "nothing captured under" in nothing.stderr
    assert "inv deploy.capture --percent" in nothing.stderr
