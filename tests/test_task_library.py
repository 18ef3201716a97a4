"""What moved out of tasks.py into the library: the tables, rankings and report lines the tasks print, the
pipeline's shared flags, and the backend doors the tasks open."""

from __future__ import annotations

import inspect
import json

import pytest

from distracted_driver.config import Settings
from distracted_driver.data.ingest import IngestReport
from distracted_driver.data.layout import CLASSES
from distracted_driver.hosting import DeployResult, EndpointStatus, open_hosting
from distracted_driver.hosting.report import status_lines, top_classes
from distracted_driver.model.evaluate import report_lines
from distracted_driver.pipeline.options import FLAGS, options_from_flags, parse_key_values
from distracted_driver.train import Trainer, open_trainer


def test_top_classes_ranks_an_answer_and_refuses_what_is_not_json():
    answer = json.dumps([0.05] * 8 + [0.3, 0.3]).encode()
    ranked = top_classes(answer, count=3)
    assert [name for name, _, _ in ranked][:2] == [CLASSES[8], CLASSES[9]] and len(ranked) == 3
    assert ranked[0][2] == pytest.approx(0.3) and ranked[2][2] == pytest.approx(0.05)
    with pytest.raises(ValueError):
        top_classes(b"<html>")


def test_a_deploy_result_says_whether_the_model_serves():
    assert DeployResult("unchanged", "e", "v1").succeeded and DeployResult("deployed", "e", "v2").succeeded
    rolled = DeployResult("rolled-back", "e", "v1", "alarm", {"swap": 1.5})
    assert not rolled.succeeded
    assert rolled.report_lines() == ["rolled-back: endpoint e, live model v1 (alarm)", "  timings (s): swap 1.5"]


def test_endpoint_status_serves_only_when_something_answers():
    status = EndpointStatus("local", "e", "InService", "v1", runtime_running=False)
    assert status.exists and not status.serves("v1")
    assert EndpointStatus("aws", "e", "InService", "v1").serves("v1")
    assert not EndpointStatus("aws", "e").exists


def test_a_cloud_status_reads_as_lines():
    status = EndpointStatus(
        "aws",
        "dd",
        "InService",
        "v2",
        "https://runtime",
        2,
        variants=[{"name": "AllTraffic", "current_instances": 2, "desired_instances": 2, "weight": 1.0}],
        autoscaling={"AllTraffic": {"min_instances": 1, "max_instances": 4, "target_invocations_per_instance": 600}},
        data_capture={"EnableCapture": True, "CurrentSamplingPercentage": 20, "DestinationS3Uri": "s3://b/capture"},
        details={"region": "us-east-1", "config": "dd-v2"},
    )
    text = "\n".join(status_lines(status))
    assert "endpoint dd (aws): InService, live model v2" in text and "2 instances in service" in text
    assert "autoscaling AllTraffic: 1..4" in text and "20% of invocations -> s3://b/capture" in text


def test_pipeline_flags_are_declared_once_and_all_accepted():
    assert "backend" in FLAGS and "strategy" in FLAGS
    given = {name: default for name, (default, _) in FLAGS.items() if name != "backend"}
    options = options_from_flags(**{**given, "epochs": "3", "extra": "dropout=0.3", "canary_percent": "20"})
    assert options.hyperparameters == {"epochs": "3", "dropout": "0.3"} and options.canary_percent == 20
    assert set(inspect.signature(options_from_flags).parameters) - {"rest"} <= set(FLAGS)
    with pytest.raises(ValueError, match="key=value"):
        parse_key_values("dropout")


def test_the_doors_choose_the_backend_from_the_settings(tmp_path):
    local, aws = Settings(root=tmp_path), Settings(backend="aws", root=tmp_path, bucket="b")
    assert isinstance(open_trainer(local), Trainer) and type(open_trainer(local)).__name__ == "LocalTrainer"
    assert type(open_trainer(aws)).__name__ == "SageMakerTrainer"
    assert type(open_hosting(local)).__name__ == "LocalHosting"
    assert type(open_hosting(aws)).__name__ == "SageMakerHosting"


def test_sagemaker_training_refuses_a_resume(tmp_path):
    with pytest.raises(ValueError, match="--resume"):
        open_trainer(Settings(backend="aws", root=tmp_path, bucket="b")).train({}, resume="dd-1")


def test_an_ingest_report_names_what_was_left_out():
    assert IngestReport(added=["raw/a.jpg"]).left_out_line() == ""
    report = IngestReport(refused=[("a.jpg", "not an image")], unreviewed=["b.jpg", "c.jpg"])
    assert report.left_out_line() == "1 image(s) refused (listed above) and 2 row(s) not reviewed"


def test_an_evaluation_reads_as_the_model_its_scores_and_its_files():
    metrics = {
        "log_loss": 0.1,
        "accuracy": 0.95,
        "examples": 20,
        "per_class": {name: {"recall": 1.0} for name in CLASSES},
    }
    lines = report_lines("job-1", metrics, {"metrics": "reports/models/job-1/metrics.json"})
    assert lines[0] == "model job-1" and lines[-1] == "  metrics: reports/models/job-1/metrics.json"
    assert "validation log loss 0.1000" in lines[1] and "accuracy 0.950 on 20 images" in lines[1]
