"""The drift report's figures as CloudWatch metrics (on AWS), which a Terraform alarm watches.

Namespace ``DRIFT_NAMESPACE``, dimensions ``EndpointName`` and ``VariantName`` (``AllVariants``
when the report covered every variant). ``Drift`` is 1 when the report found drift and 0
when it did not (a window with too few requests puts no ``Drift`` datapoint: nothing was
judged). The alarm in ``terraform/modules/alarms`` fires on ``Drift`` >= 1, so the thresholds
stay in one place, ``load_test/drift.toml``; the other metrics are the figures behind it.
"""

from __future__ import annotations

from datetime import datetime

from distracted_driver.config import Settings

DRIFT_NAMESPACE = "DistractedDriver/Drift"
ALL_VARIANTS = "AllVariants"
DRIFT_METRIC = "Drift"


def drift_metrics(report: dict) -> list[dict]:
    """``MetricData`` entries for one report (the figures it has; a check without data puts nothing)."""
    checks = report["checks"]
    figures = {
        "CapturedRequests": (report["records"]["requests"], "Count"),
        "RefusedShare": (checks["refused"]["share"], "None"),
    }
    if report["verdict"] != "too-few":
        figures[DRIFT_METRIC] = (1.0 if report["verdict"] == "drift" else 0.0, "None")
    if "predicted_classes" in checks:
        figures["PredictedClassPSI"] = (checks["predicted_classes"]["psi"], "None")
        figures["LowConfidenceShare"] = (checks["confidence"]["low_confidence_share"], "None")
        figures["ConfidenceKS"] = (checks["confidence"]["ks_statistic"], "None")
        figures["ImageStatisticMaxKS"] = (max(c["ks_statistic"] for c in checks["image_statistics"].values()), "None")
    if checks.get("features", {}).get("ratio") is not None:
        figures["FeatureDistanceRatio"] = (checks["features"]["ratio"], "None")
    dimensions = [
        {"Name": "EndpointName", "Value": report["endpoint"]},
        {"Name": "VariantName", "Value": report["variant"] or ALL_VARIANTS},
    ]
    when = datetime.fromisoformat(report["created"])
    return [
        {"MetricName": name, "Dimensions": dimensions, "Timestamp": when, "Value": float(value), "Unit": unit}
        for name, (value, unit) in figures.items()
    ]


def put_drift_metrics(settings: Settings, report: dict, client=None) -> list[dict]:
    """Put the report's figures into CloudWatch; returns what was put."""
    if client is None:
        import boto3

        client = boto3.client("cloudwatch", region_name=settings.region)
    metrics = drift_metrics(report)
    client.put_metric_data(Namespace=DRIFT_NAMESPACE, MetricData=metrics)
    return metrics
