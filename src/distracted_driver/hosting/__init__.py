"""Hosting stage: endpoints, blue/green swaps, autoscaling (local runtime and SageMaker)."""

from __future__ import annotations

from distracted_driver.config import Settings
from distracted_driver.hosting.base import Hosting


def open_hosting(settings: Settings, **options) -> Hosting:
    """The hosting backend for the settings: the local runtime, or SageMaker.

    ``options`` go to the local backend (``instance_threads``, ``on_event``, ...).
    """
    if settings.backend == "local":
        from distracted_driver.hosting.local import LocalHosting

        return LocalHosting(settings, **options)
    from distracted_driver.hosting.aws import SageMakerHosting

    return SageMakerHosting(settings)
