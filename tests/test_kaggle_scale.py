"""Memory stays bounded at Kaggle's scale: ``benchmarks/kaggle_scale.py --scale 0.05``, every stage under a ceiling.

At 0.05 the run holds 1,120 training and 3,986 test images (640x480). A stage that kept
the decoded inputs of its images would need 0.6 MB each (3x224x224 float32): 0.5 GB for
the training images, 2.4 GB for the test set, well past the ceilings; what the stages
need whatever the number of images (Python, torch, ONNX Runtime and one batch of
activations, measured at 0.05 and 0.1 alike) is well under them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 5 minutes: draws 5,106 images, trains, deploys, predicts

ROOT = Path(__file__).resolve().parents[1]
# MB of RSS, summed over a stage's processes. Training holds torch, the network, ONNX Runtime's
# calibration and both precisions' sessions in one process (1.18 GB measured at 0.05):
TRAIN_STAGE_CEILING_MB = 1536
# Other stages that run a network (ONNX Runtime):
MODEL_STAGE_CEILING_MB = 1024
# Stages that only move, check and re-encode images:
DATA_STAGE_CEILING_MB = 512
MODEL_STAGES = {"train", "evaluate", "gate", "deploy", "smoke", "predict"}


@pytest.mark.timeout(1800)
def test_every_stage_stays_under_its_memory_ceiling(tmp_path):
    report_path = tmp_path / "kaggle_scale.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "kaggle_scale.py"),
            "--scale",
            "0.05",
            "--work",
            str(tmp_path),
            "--epochs",
            "10",
            "--json",
            str(report_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(report_path.read_text())
    stages = {stage["name"]: stage for stage in report["stages"]}
    assert {"generate", "add", "materialize", "convert", "upload", "train", "evaluate", "deploy", "predict"} <= {
        name for name, stage in stages.items() if stage["status"] == "done"
    }
    assert report["train_images"] == 1120 and stages["predict"]["images"] == report["test_images"] == 3986
    for name, stage in stages.items():
        ceiling = (
            TRAIN_STAGE_CEILING_MB
            if name == "train"
            else MODEL_STAGE_CEILING_MB
            if name in MODEL_STAGES
            else DATA_STAGE_CEILING_MB
        )
        assert stage["peak_rss_mb"] < ceiling, f"{name}: peak RSS {stage['peak_rss_mb']} MB (ceiling {ceiling} MB)"
    submission = (tmp_path / "run-scale0.05" / "submission.csv").read_text().splitlines()
    assert len(submission) == 3987 and submission[0].startswith("img,c0,")
