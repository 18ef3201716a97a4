"""Hosting stage: endpoints, blue/green swaps, autoscaling (local runtime and SageMaker).

This package is the one door to either backend: callers (the pipeline, the tasks, the demo) take
``open_hosting`` and the types below, and never import ``hosting.local`` or ``hosting.aws``.
"""

from __future__ import annotations

from collections.abc import Callable

from distracted_driver.config import Settings
from distracted_driver.hosting.base import (
    STRATEGIES,
    AlarmThresholds,
    DeployResult,
    EndpointStatus,
    Hosting,
    HostingError,
    ModelSpec,
    ScalingPolicy,
    TrafficRouting,
)

__all__ = [
    "STRATEGIES",
    "AlarmThresholds",
    "DeployResult",
    "EndpointStatus",
    "Hosting",
    "HostingError",
    "ModelSpec",
    "ScalingPolicy",
    "TrafficRouting",
    "open_hosting",
]


def open_hosting(settings: Settings, *, on_event: Callable[[dict], None] | None = None, **local_options) -> Hosting:
    """The hosting backend for the settings: the local runtime, or SageMaker.

    ``on_event`` gets each event of a local swap as it happens (SageMaker's backend draws its own
    progress line); ``local_options`` go to the local backend (``instance_threads``, ...).
    """
    # Each backend is imported when chosen: boto3's clients, or the local runtime's client, and not both.
    if settings.backend == "local":
        from distracted_driver.hosting.local import LocalHosting

        return LocalHosting(settings, on_event=on_event, **local_options)
    from distracted_driver.hosting.aws import SageMakerHosting

    return SageMakerHosting(settings)
