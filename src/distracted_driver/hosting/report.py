"""``inv deploy.status`` as text, on either backend: the endpoint, its fleets and instances, scaling, the last swap."""

from __future__ import annotations

import json
import time
from pathlib import Path

from distracted_driver.data.layout import CLASSES, DESCRIPTIONS
from distracted_driver.hosting.base import EndpointStatus, Hosting
from distracted_driver.hosting.smoke import content_type


def _ago(stamp: float | None) -> str:
    return "-" if not stamp else f"{time.time() - stamp:.0f} s ago"


def capture_text(capture: dict | None) -> str:
    """The endpoint's data capture in one line: the local runtime's view, or SageMaker's DataCaptureConfig."""
    if not capture:
        return "off"
    if "sampling_percent" in capture:  # the local runtime, with its writer's counts
        stats = capture.get("stats") or {}
        counts = (
            (
                f" ({stats['written']} records written in {stats['files']} files, {stats['queued']} queued, "
                f"{stats['dropped']} dropped (queue full), {stats['lost']} lost)"
            )
            if stats
            else ""
        )
        share = f"{capture['sampling_percent']}% of invocations" if capture["sampling_percent"] else "off"
        return f"{share} -> {capture.get('destination_uri', capture.get('destination'))}{counts}"
    percent = capture.get("CurrentSamplingPercentage", capture.get("InitialSamplingPercentage"))
    if not capture.get("EnableCapture", True) or percent == 0:
        return "off"
    share = "on" if percent is None else f"{percent}% of invocations"
    state = f", {capture['CaptureStatus']}" if capture.get("CaptureStatus") else ""
    return f"{share} -> {capture.get('DestinationS3Uri')}{state}"


def status_lines(status: EndpointStatus) -> list[str]:
    if status.backend != "local":
        return _cloud_lines(status)
    runtime = status.details["runtime"]
    where = f"runtime {runtime['url']} (pid {runtime['pid']})" if runtime["running"] else "runtime not running"
    lines = [f"endpoint {status.endpoint}: {status.status}, live model {status.live_version or '-'}; {where}"]
    if status.status_reason:
        lines.append(f"  why: {status.status_reason}")
    if runtime.get("supervisor"):
        lines.append(f"  supervisor: runtime {runtime['supervisor']}")
    for variant in status.variants:
        lines += _variant_lines(variant)
    lines.append(f"  data capture: {capture_text(status.data_capture)}")
    for activity in status.details.get("scaling_activities", [])[-3:]:
        lines.append(
            f"  scaling {activity['variant']} {activity['from']} -> {activity['to']} ({activity['status']}, "
            f"{_ago(activity['time'])}): {activity['reason']}"
        )
    lines += _deployment_lines(status.last_deployment)
    if runtime["running"]:
        lines.append(
            f"  boto3: boto3.client('sagemaker-runtime', endpoint_url='{runtime['url']}', ...)"
            f".invoke_endpoint(EndpointName='{status.endpoint}', ContentType='image/jpeg', Body=...)"
        )
    lines.append(f"  log: {runtime['log']}")
    return lines


def _cloud_lines(status: EndpointStatus) -> list[str]:
    """SageMaker's view: status, variants with their instance counts, autoscaling, capture."""
    where = ", ".join(f"{k} {v}" for k, v in status.details.items())
    lines = [
        f"endpoint {status.endpoint} ({status.backend}): {status.status}, live model {status.live_version or '-'}"
        + (f"; {where}" if where else "")
    ]
    if status.status_reason:
        lines.append(f"  why: {status.status_reason}")
    for variant in status.variants:
        lines.append(
            f"  variant {variant['name']} (weight {variant.get('weight')}): {variant.get('current_instances')} "
            f"instances in service, {variant.get('desired_instances')} desired"
        )
    for name, policy in status.autoscaling.items():
        lines.append(
            f"  autoscaling {name}: {policy['min_instances']}..{policy['max_instances']} instances, target "
            f"{policy.get('target_invocations_per_instance', '-')} invocations/instance/min"
        )
    lines.append(f"  data capture: {capture_text(status.data_capture)}")
    if status.runtime_url:
        lines.append(
            f"  boto3: boto3.client('sagemaker-runtime').invoke_endpoint(EndpointName='{status.endpoint}', "
            "ContentType='image/jpeg', Body=...)"
        )
    return lines


def _variant_lines(variant: dict) -> list[str]:
    lines = [
        f"  variant {variant['name']} (weight {variant['weight']:g}, desired {variant.get('desired_instances', '-')} instances)"
    ]
    for fleet in variant["fleets"]:
        window = fleet["last_window"]
        lines.append(
            f"    {fleet['role']:<5} {fleet['model_version']} {fleet['traffic_percent']:g}% of traffic; "
            f"{fleet['requests']} requests, {fleet['errors']} errors; last {window['window_seconds']:g} s: "
            f"{window['requests']} requests, p99 {window['p99_ms'] if window['p99_ms'] is not None else '-'} ms"
        )
        for instance in fleet["instances"]:
            lines.append(
                f"      {instance['id']} {instance['state']:<10} pid {instance['pid']} {instance['url']} "
                f"({instance['requests']} requests, {instance['errors']} errors)"
            )
    policy = variant.get("autoscaling")
    if policy:
        lines.append(
            f"    autoscaling: {policy['min_instances']}..{policy['max_instances']} instances, target "
            f"{policy['target_invocations_per_instance']:g} invocations/instance/min over {policy['metric_window_seconds']:g} s, "
            f"cooldowns out {policy['scale_out_cooldown_seconds']:g} s / in {policy['scale_in_cooldown_seconds']:g} s"
        )
    decision = variant.get("last_scaling_decision")
    if decision:
        lines.append(f"    last decision: {decision['reason']}")
    return lines


def _deployment_lines(deployment: dict | None) -> list[str]:
    if not deployment:
        return []
    lines = [
        f"  last deployment {deployment['id']} ({deployment['kind']}, {deployment['strategy']}): "
        f"{deployment['outcome'] or deployment['phase']}, {deployment['from_versions'] or '-'} -> {deployment['to_versions']}"
        + (f"; {deployment['reason']}" if deployment["reason"] else "")
    ]
    if deployment["timings"]:
        lines.append("    timings (s): " + ", ".join(f"{k} {v:g}" for k, v in deployment["timings"].items()))
    return lines


def top_classes(answer: bytes, count: int = 3) -> list[tuple[str, str, float]]:
    """(class, description, probability) of an endpoint's answer (ten probabilities), most likely first."""
    probabilities = json.loads(answer)
    ranked = sorted(zip(CLASSES, probabilities), key=lambda pair: -pair[1])[:count]
    return [(name, DESCRIPTIONS[name], float(p)) for name, p in ranked]


def invoke_lines(hosting: Hosting, image: str | Path, variant: str | None = None) -> list[str]:
    """``inv deploy.invoke``: one JPEG/PNG through the endpoint; the variant that answered and the top classes."""
    body = Path(image).read_bytes()
    answer, answered_by = hosting.invoke(body, content_type(body), variant)
    return [f"{image}: answered by variant {answered_by}"] + [
        f"  {name} {description:<26} {p:.3f}" for name, description, p in top_classes(answer)
    ]
