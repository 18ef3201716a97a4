"""The drift report on AWS (moto): captured files in S3 as SageMaker writes them, the figures into CloudWatch.

Run with the IAM recorder too (``tests/test_iam.py``): the report's S3 reads and its
``PutMetricData`` are CodeBuild's calls, judged against the CodeBuild role's policy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from model_fixtures import features_exposed, tiny_onnx_model, write_artifact
from monitor_support import captured_file, tiny_sample_thresholds, validation_frames

from distracted_driver.config import Settings
from distracted_driver.data.imaging import Preprocessing
from distracted_driver.model.artifact import load_artifact, pack_artifact
from distracted_driver.model.inference import Classifier
from distracted_driver.model.registry import Registry
from distracted_driver.monitor.cloudwatch import ALL_VARIANTS, DRIFT_METRIC, DRIFT_NAMESPACE
from distracted_driver.monitor.report import drift_report
from distracted_driver.storage.s3 import S3Storage
from distracted_driver.train.baseline import record_baseline

pytestmark = pytest.mark.moto  # moto's S3 and CloudWatch

BUCKET = "dd-monitor-bucket"
VERSION = "dd-20261130-000000-abcd"


@pytest.fixture
def captured_on_s3(aws, tmp_path, tiny_channels):
    """A live model with its baseline in S3, and an hour of its traffic captured as SageMaker writes it."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    settings = Settings(backend="aws", root=tmp_path, bucket=BUCKET)
    storage = S3Storage(BUCKET)
    fixture = write_artifact(
        tmp_path / "model", VERSION, features_exposed(tiny_onnx_model(4)), Preprocessing(input_size=64)
    )
    artifact = load_artifact(fixture.directory)
    record_baseline(artifact, tiny_channels / "train", tiny_channels / "validation")
    registry = Registry(storage, settings)
    storage.put_file(pack_artifact(fixture.directory, tmp_path / "model.tar.gz"), registry.artifact_key(VERSION))
    registry.register(VERSION, artifact)
    registry.set_live(VERSION)

    images = validation_frames(tiny_channels)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    key, contents = captured_file(settings, Classifier(artifact), images, when)
    boto3.client("s3", region_name="us-east-1").put_object(Bucket=BUCKET, Key=key, Body=contents)
    return settings, len(images), when


def test_the_report_reads_s3_and_puts_its_figures_to_cloudwatch(captured_on_s3, tmp_path):
    settings, sent, when = captured_on_s3
    result = drift_report(
        settings,
        since=when - timedelta(minutes=1),
        out_root=tmp_path / "reports",
        thresholds=tiny_sample_thresholds(tmp_path),
    )
    assert result.report["records"]["answered"] == sent
    # The baseline's own images sent again: nothing drifted.
    assert result.verdict == "no-drift", result.report["drifted_checks"]
    cloudwatch = boto3.client("cloudwatch", region_name=settings.region)
    listed = cloudwatch.list_metrics(Namespace=DRIFT_NAMESPACE)["Metrics"]
    names = {metric["MetricName"] for metric in listed}
    assert {
        DRIFT_METRIC,
        "CapturedRequests",
        "PredictedClassPSI",
        "LowConfidenceShare",
        "FeatureDistanceRatio",
        "ImageStatisticMaxKS",
        "RefusedShare",
    } <= names
    dimensions = {(d["Name"], d["Value"]) for metric in listed for d in metric["Dimensions"]}
    assert dimensions == {("EndpointName", settings.endpoint_name), ("VariantName", ALL_VARIANTS)}
    stats = cloudwatch.get_metric_statistics(
        Namespace=DRIFT_NAMESPACE,
        MetricName="CapturedRequests",
        Statistics=["Maximum"],
        Period=60,
        Dimensions=[
            {"Name": "EndpointName", "Value": settings.endpoint_name},
            {"Name": "VariantName", "Value": ALL_VARIANTS},
        ],
        StartTime=datetime.now(UTC) - timedelta(hours=1),
        EndTime=datetime.now(UTC) + timedelta(hours=1),
    )
    assert [point["Maximum"] for point in stats["Datapoints"]] == [float(sent)]
    drift = cloudwatch.get_metric_statistics(
        Namespace=DRIFT_NAMESPACE,
        MetricName=DRIFT_METRIC,
        Statistics=["Maximum"],
        Period=60,
        Dimensions=[
            {"Name": "EndpointName", "Value": settings.endpoint_name},
            {"Name": "VariantName", "Value": ALL_VARIANTS},
        ],
        StartTime=datetime.now(UTC) - timedelta(hours=1),
        EndTime=datetime.now(UTC) + timedelta(hours=1),
    )
    assert [point["Maximum"] for point in drift["Datapoints"]] == [0.0]
