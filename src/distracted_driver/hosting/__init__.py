"""Hosting stage: endpoints, blue/green swaps, autoscaling (local runtime and SageMaker)."""
