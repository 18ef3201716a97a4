"""boto3 clients with the retry policy every AWS call of ours uses."""

from __future__ import annotations

import boto3
from botocore.config import Config

# Throttling (SageMaker's control plane above all) is retried with client-side rate limiting,
# not surfaced: a pipeline run makes bursts of Describe/List calls.
RETRIES = {"max_attempts": 10, "mode": "adaptive"}


def aws_client(service: str, region: str | None, **config):
    """A client of ``service`` in ``region``; ``config``: other botocore options (``max_pool_connections``)."""
    return boto3.session.Session(region_name=region).client(service, config=Config(retries=RETRIES, **config))
