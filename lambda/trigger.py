"""S3 event → a pipeline build: new data landed, so run the pipeline again.

Terraform's ``trigger`` module sends ``s3:ObjectCreated:*`` events for keys under
``<raw_prefix>/manifests/`` ending in ``.json`` (what ``inv data.add`` writes
last, after every image) to this function, which calls ``codebuild:StartBuild``
on the pipeline's project, unless a build of that project is already in
progress. Skipping then loses nothing: the pipeline converts from the newest
manifest, so the running build or the next one picks the new data up.

Only the standard library and boto3 (deployed on its own, like handler.py).

Environment:
    PROJECT_NAME     CodeBuild project to start (required)
    MANIFEST_PREFIX  key prefix of data manifests, e.g. ``raw/manifests/`` (required)
    MANIFEST_SUFFIX  default ``.json``
    RECENT_BUILDS    how many of the project's newest builds to inspect (default 10)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.parse

import boto3
import botocore.config
import botocore.exceptions

logger = logging.getLogger("trigger")
logger.setLevel(logging.INFO)

IN_PROGRESS = "IN_PROGRESS"
# CodeBuild refuses a build beyond the project's concurrent build limit with this code.
LIMIT_REACHED = "AccountLimitExceededException"

_client = None


def codebuild():
    global _client
    if _client is None:
        config = botocore.config.Config(
            connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 3, "mode": "standard"}
        )
        _client = boto3.session.Session().client("codebuild", config=config)
    return _client


def _log(event: str, **fields) -> None:
    logger.info(json.dumps({"event": event, **fields}, sort_keys=True, default=str))


def manifest_keys(event: dict, prefix: str, suffix: str) -> list[tuple[str, str, str]]:
    """(bucket, key, sequencer) of each new manifest the event names; other records are ignored."""
    found = []
    for record in event.get("Records") or []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3") or {}
        bucket = (s3.get("bucket") or {}).get("name", "")
        obj = s3.get("object") or {}
        key = urllib.parse.unquote_plus(obj.get("key", ""))  # S3 event keys are URL-encoded
        if key.startswith(prefix) and key.endswith(suffix) and len(key) > len(prefix):
            found.append((bucket, key, str(obj.get("sequencer", ""))))
    return found


def build_in_progress(project: str, recent: int) -> str | None:
    """Id of a build of ``project`` that is still running, if any (newest builds first)."""
    ids = codebuild().list_builds_for_project(projectName=project, sortOrder="DESCENDING").get("ids", [])[:recent]
    if not ids:
        return None
    for build in codebuild().batch_get_builds(ids=ids).get("builds", []):
        if build.get("buildStatus") == IN_PROGRESS:
            return build["id"]
    return None


def handler(event, context):
    project = os.environ["PROJECT_NAME"]
    prefix = os.environ["MANIFEST_PREFIX"]
    suffix = os.environ.get("MANIFEST_SUFFIX", ".json")
    recent = int(os.environ.get("RECENT_BUILDS", "10"))

    manifests = manifest_keys(event if isinstance(event, dict) else {}, prefix, suffix)
    if not manifests:
        _log("ignored", reason="no new data manifest in the event", prefix=prefix)
        return {"started": False, "reason": "no manifest"}
    bucket, key, sequencer = manifests[-1]  # one build covers every manifest of this event

    running = build_in_progress(project, recent)
    if running:
        _log("skipped", reason="a build is in progress", build=running, manifest=key)
        return {"started": False, "reason": "in progress", "build": running, "manifest": key}

    # S3 may deliver one event twice; the same token within CodeBuild's idempotency
    # window starts one build, not two.
    token = hashlib.sha256(f"{bucket}/{key}/{sequencer}".encode()).hexdigest()[:64]
    try:
        build = codebuild().start_build(
            projectName=project,
            idempotencyToken=token,
            environmentVariablesOverride=[
                {"name": "DD_TRIGGER_MANIFEST", "value": f"s3://{bucket}/{key}", "type": "PLAINTEXT"},
            ],
        )["build"]
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") == LIMIT_REACHED:
            _log("skipped", reason="the project's concurrent build limit is reached", manifest=key)
            return {"started": False, "reason": "limit reached", "manifest": key}
        raise
    _log("started", build=build["id"], manifest=key)
    return {"started": True, "build": build["id"], "manifest": key}
