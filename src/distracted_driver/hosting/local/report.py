"""``inv deploy.status`` as text: the endpoint, its fleets and instances, scaling and the last swap."""

from __future__ import annotations

import time


def _ago(stamp: float | None) -> str:
    return "-" if not stamp else f"{time.time() - stamp:.0f} s ago"


def capture_text(capture: dict | None) -> str:
    """The endpoint's data capture in one line: the local runtime's view, or SageMaker's DataCaptureConfig."""
    if not capture:
        return "off"
    if "sampling_percent" in capture:  # the local runtime, with its writer's counts
        stats = capture.get("stats") or {}
        counts = (f" ({stats['written']} records written in {stats['files']} files, {stats['queued']} queued, "
                  f"{stats['dropped']} dropped (queue full), {stats['lost']} lost)") if stats else ""
        share = f"{capture['sampling_percent']}% of invocations" if capture["sampling_percent"] else "off"
        return f"{share} -> {capture.get('destination_uri', capture.get('destination'))}{counts}"
    percent = capture.get("CurrentSamplingPercentage", capture.get("InitialSamplingPercentage"))
    if not capture.get("EnableCapture", True) or percent == 0:
        return "off"
    share = "on" if percent is None else f"{percent}% of invocations"
    state = f", {capture['CaptureStatus']}" if capture.get("CaptureStatus") else ""
    return f"{share} -> {capture.get('DestinationS3Uri')}{state}"


def status_lines(status: dict) -> list[str]:
    if status.get("backend") != "local":  # another backend's status: show its fields as they are
        return [f"{key}: {value}" for key, value in status.items()]
    runtime = status["runtime"]
    where = f"runtime {runtime['url']} (pid {runtime['pid']})" if runtime["running"] else "runtime not running"
    lines = [f"endpoint {status['endpoint']}: {status['status']}, live model {status['live_version'] or '-'}; {where}"]
    if status.get("status_reason"):
        lines.append(f"  why: {status['status_reason']}")
    if runtime.get("supervisor"):
        lines.append(f"  supervisor: runtime {runtime['supervisor']}")
    for variant in status["variants"]:
        lines.append(f"  variant {variant['name']} (weight {variant['weight']:g}, desired {variant.get('desired_instances', '-')} instances)")
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
    lines.append(f"  data capture: {capture_text(status.get('data_capture'))}")
    for activity in status.get("scaling_activities", [])[-3:]:
        lines.append(f"  scaling {activity['variant']} {activity['from']} -> {activity['to']} ({activity['status']}, "
                     f"{_ago(activity['time'])}): {activity['reason']}")
    deployment = status.get("last_deployment")
    if deployment:
        lines.append(
            f"  last deployment {deployment['id']} ({deployment['kind']}, {deployment['strategy']}): "
            f"{deployment['outcome'] or deployment['phase']}, {deployment['from_versions'] or '-'} -> {deployment['to_versions']}"
            + (f"; {deployment['reason']}" if deployment["reason"] else "")
        )
        if deployment["timings"]:
            lines.append("    timings (s): " + ", ".join(f"{k} {v:g}" for k, v in deployment["timings"].items()))
    if runtime["running"]:
        lines.append(f"  boto3: boto3.client('sagemaker-runtime', endpoint_url='{runtime['url']}', ...)"
                     f".invoke_endpoint(EndpointName='{status['endpoint']}', ContentType='image/jpeg', Body=...)")
    lines.append(f"  log: {runtime['log']}")
    return lines
