"""SageMaker Batch Transform: ``inv predict.batch --backend aws``, batch prediction past one machine.

It lives beside ``hosting.aws`` because it runs what hosting serves: the SageMaker
model ``<endpoint>-<version>`` (our serving image over that version's
``model.tar.gz``, made by ``SageMakerHosting.ensure_model`` when no deploy has made
it yet), and our model server follows the hosting contract that Batch Transform
also speaks (``/ping``, ``/invocations``). It needs ``serve.batch_predict``'s
submission writer and ``data.imaging``'s check, both below it; nothing in
``serve`` may import ``hosting``.

A run, in order:

1. **Images.** A local directory is checked and uploaded to
   ``<transform>/<job>/input/``; an ``s3://<bucket>/<transform>/…`` prefix is
   read and checked where it lies (the execution role reads images only under
   the transform prefix). Every image passes ``check_image_bytes`` (signature,
   stated size, completeness, no decode) and the model server's body limit, or
   it is listed with the reason and left out of the job.
2. **The job.** A manifest (``<transform>/<job>/input.manifest``) names the
   accepted images; one image per request (``SplitType`` None, SingleRecord),
   the content type from the extensions, JSON out, outputs under
   ``<transform>/<job>/output/``.
3. **The wait.** DescribeTransformJob every ``poll_seconds``; the progress bar
   counts the ``.out`` objects written so far and the time elapsed. Ctrl-C
   stops the job (StopTransformJob), so nothing bills on behind it.
4. **The submission.** Each ``<name>.out`` holds the model server's answer to
   one image (the JSON list of ten probabilities); they are assembled by
   ``serve.batch_predict.write_submission``, the writer of local batch
   prediction, in the order of the input names.

What SageMaker does with a bad image (Developer Guide, "Use Batch Transform",
errors; API reference, ``TransformOutput.S3OutputPath``): an input object whose
request fails gets no ``.out``; the job goes on with the other objects and ends
``Failed`` "to prompt investigation". Our model server answers 400 for an image
it cannot decode, and the job's data log in CloudWatch
(``/aws/sagemaker/TransformJobs``, stream ``<job>/<instance>/data-log``) says
``[sagemaker logs]: <bucket>/<key>: ClientError: 400`` followed by the server's
message. So:

- the check of step 1 keeps what it can refuse out of the job, so the common
  bad image never fails the job at all;
- an image that still fails in the server (corrupt scan data, which only a
  decode finds) has no ``.out``; it is listed with the server's message from
  the data log, and left out of the CSV, as local batch prediction lists it;
- a missing output that no 4xx of the model server explains (the container
  died, the job was stopped or timed out) makes the result an error: the
  partial submission is written, the images without output are listed, and
  the task exits 1.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from distracted_driver.awsclient import aws_client
from distracted_driver.config import Settings
from distracted_driver.data.imaging import ImageError, check_image_bytes
from distracted_driver.data.layout import CLASSES
from distracted_driver.data.payload import INVOKE_ENDPOINT_MAX_BYTES
from distracted_driver.hosting.aws import NAME_PATTERN, SageMakerHosting, transform_job_prefix
from distracted_driver.hosting.base import ModelSpec
from distracted_driver.model.registry import Registry
from distracted_driver.serve.batch_predict import BatchResult, list_images, write_submission
from distracted_driver.serve.server import ServerConfig
from distracted_driver.storage import KeyNotFound, Storage, open_storage

LOG_GROUP = "/aws/sagemaker/TransformJobs"
TERMINAL = ("Completed", "Failed", "Stopped")
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
MIXED_CONTENT_TYPE = "application/x-image"  # the model server takes either image under this type
ACCEPT = "application/json"
OUTPUT_SUFFIX = ".out"
MiB = 1024 * 1024
# Limits of the service model (botocore's sagemaker service-2.json) and of our model server.
INSTANCE_COUNT_RANGE = (1, 100)
MAX_PAYLOAD_MB_RANGE = (1, 100)
MAX_CONCURRENT_RANGE = (1, ServerConfig.queue_size)  # past its queue the model server answers 503
INVOCATION_TIMEOUT_S = 60  # one image takes milliseconds; the model is loaded before /ping answers 200
INVOCATION_RETRIES = 3  # SageMaker's maximum; covers a 503 from a momentarily full queue
# "<time>:[sagemaker logs]: <bucket>/<key>: <text>", one line per fact about one input object.
_DATA_LOG_LINE = re.compile(r"\[sagemaker logs\]: (?P<object>[^\s:]+/[^\s:]+): ?(?P<text>.*)$")
_CLIENT_ERROR = re.compile(r"ClientError: (?P<status>\d{3})")
_SIZES = re.compile(r"^(?:(?P<times>\d+)?xlarge|large|medium|small|micro|nano)$")


class TransformInputError(ValueError):
    """An option or the images cannot make a transform job; the message says why and what to do."""


@dataclass(frozen=True)
class TransformOptions:
    instance_count: int = 1
    instance_type: str | None = None  # None: the serving instance type, or the next size Batch Transform offers
    max_concurrent: int = 8  # MaxConcurrentTransforms: requests in flight to each instance
    max_payload_mb: int = 6
    poll_seconds: float = 30.0
    workers: int = 16  # threads checking, uploading and fetching objects
    progress: bool = True

    def check(self) -> None:
        for name, value, (low, high) in (
            ("InstanceCount", self.instance_count, INSTANCE_COUNT_RANGE),
            ("MaxConcurrentTransforms", self.max_concurrent, MAX_CONCURRENT_RANGE),
            ("MaxPayloadInMB", self.max_payload_mb, MAX_PAYLOAD_MB_RANGE),
        ):
            if not low <= value <= high:
                raise TransformInputError(f"{name} must be {low}..{high}, not {value}")

    @property
    def body_limit(self) -> int:
        """The largest image one request may carry: the job's payload limit and the model server's."""
        return min(self.max_payload_mb * MiB, INVOKE_ENDPOINT_MAX_BYTES)


@dataclass
class StagedImages:
    """The images a job will score: ``prefix`` + each name is its key; ``refused`` never reached the job."""

    prefix: str
    names: list[str]
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        types = {CONTENT_TYPES[Path(name).suffix.lower()] for name in self.names}
        return types.pop() if len(types) == 1 else MIXED_CONTENT_TYPE


@dataclass
class TransformResult:
    job: str | None  # None when every image was refused and no job was started
    status: str
    instance_type: str
    instance_count: int
    batch: BatchResult
    notes: list[str] = field(default_factory=list)
    error: str = ""  # set when images lack an output that no refusal explains; the task then exits 1

    def summary(self) -> str:
        if self.job is None:
            return f"no transform job started: {self.batch.summary()}"
        return (
            f"transform job {self.job} ({self.instance_count} x {self.instance_type}) {self.status}: "
            f"{self.batch.summary()}"
        )


# --- names and requests ---------------------------------------------------------------------


def transform_job_name(endpoint: str, now: datetime | None = None, token: str | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    name = f"{transform_job_prefix(endpoint)}{stamp}-{token or secrets.token_hex(2)}"
    if len(name) > 63 or not NAME_PATTERN.match(name):
        raise TransformInputError(
            f"{name!r} is not a valid transform job name (letters, digits, '-', at most 63): shorten the endpoint name"
        )
    return name


def _size_rank(instance_type: str) -> float:
    size = instance_type.rsplit(".", 1)[-1]
    match = _SIZES.match(size)
    if not match:
        return math.inf  # metal and other oddities: never picked as "the next size"
    if size.endswith("xlarge"):
        return 2.0 * int(match["times"] or 1)
    return {"large": 1.0, "medium": 0.5, "small": 0.25, "micro": 0.125, "nano": 0.0625}[size]


def choose_instance_type(requested: str | None, serving: str, offered: list[str] | tuple[str, ...]) -> tuple[str, str]:
    """The instance type of the job and a note when it is not the one asked for.

    Batch Transform offers fewer types than hosting (no ``ml.c5.large``, the dev
    serving type), so without a request the serving type is taken where offered,
    else the next larger size of its family that is.
    """
    if requested:
        if requested not in offered:
            family = requested.rsplit(".", 1)[0]
            same = sorted((t for t in offered if t.rsplit(".", 1)[0] == family), key=_size_rank)[:4]
            hint = f"; of its family Batch Transform offers {', '.join(same)}" if same else ""
            raise TransformInputError(f"{requested!r} is not an instance type Batch Transform offers{hint}")
        return requested, ""
    if serving in offered:
        return serving, ""
    family = serving.rsplit(".", 1)[0]
    larger = sorted(
        (t for t in offered if t.rsplit(".", 1)[0] == family and _size_rank(t) > _size_rank(serving)), key=_size_rank
    )
    if not larger:
        raise TransformInputError(
            f"the serving instance type {serving!r} is not offered by Batch Transform and "
            "has no larger size that is: name an instance type"
        )
    return larger[0], f"Batch Transform does not offer {serving} (the serving instance type): using {larger[0]}"


def transform_request(
    job: str,
    model_name: str,
    version: str,
    manifest_uri: str,
    output_uri: str,
    content_type: str,
    instance_type: str,
    options: TransformOptions,
    kms_key_id: str = "",
) -> dict:
    """The ``CreateTransformJob`` request: one image per request, JSON answers, one ``.out`` per image."""
    output = {"S3OutputPath": output_uri, "Accept": ACCEPT, "AssembleWith": "None"}
    if kms_key_id:
        output["KmsKeyId"] = kms_key_id
    return {
        "TransformJobName": job,
        "ModelName": model_name,
        "MaxConcurrentTransforms": options.max_concurrent,
        "MaxPayloadInMB": options.max_payload_mb,
        "BatchStrategy": "SingleRecord",
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": INVOCATION_TIMEOUT_S,
            "InvocationsMaxRetries": INVOCATION_RETRIES,
        },
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest_uri}},
            "ContentType": content_type,
            "CompressionType": "None",
            "SplitType": "None",
        },
        "TransformOutput": output,
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": options.instance_count},
        "Tags": [{"Key": "model-version", "Value": version}, {"Key": "project", "Value": "distracted-driver"}],
    }


# --- reading what the job left ---------------------------------------------------------------


def parse_output(body: bytes) -> np.ndarray:
    """One ``.out``: the model server's JSON list of ten probabilities; raises ValueError saying what is wrong."""
    try:
        values = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"output is not JSON: {body[:80]!r}") from None
    if (
        not isinstance(values, list)
        or len(values) != len(CLASSES)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(f"output is not the list of {len(CLASSES)} probabilities: {body[:80]!r}")
    row = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(row)) or row.min() < 0 or abs(float(row.sum()) - 1.0) > 1e-3:
        raise ValueError(f"output is not a probability distribution (sum {float(row.sum()):.4f}): {body[:80]!r}")
    return row


def match_outputs(names: list[str], output_keys: list[str], output_prefix: str) -> dict[str, str]:
    """``{name: key of its .out}``. SageMaker writes ``<output prefix><name>.out`` for a manifest's
    ``<prefix><name>``; an output elsewhere under the prefix is matched by its file name when that is unique."""
    outputs = {
        key[len(output_prefix) : -len(OUTPUT_SUFFIX)]: key
        for key in output_keys
        if key.startswith(output_prefix) and key.endswith(OUTPUT_SUFFIX)
    }
    found = {name: outputs.pop(name) for name in names if name in outputs}
    by_file = defaultdict(list)
    for relative, key in outputs.items():
        by_file[relative.rsplit("/", 1)[-1]].append(key)
    for name in names:
        keys = by_file.get(name.rsplit("/", 1)[-1], [])
        if name not in found and len(keys) == 1:
            found[name] = keys[0]
    return found


def refusals_from_log(lines: list[str], object_prefix: str) -> dict[str, tuple[str, int | None]]:
    """``{name: (reason, HTTP status)}`` from a job's data log, for objects under ``<bucket>/<prefix>``."""
    texts: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        match = _DATA_LOG_LINE.search(line)
        if match and match["object"].startswith(object_prefix):
            text = match["text"].strip()
            if text and text != "Message:":
                texts[match["object"][len(object_prefix) :]].append(text)
    refusals = {}
    for name, parts in texts.items():
        status = next((int(m["status"]) for m in map(_CLIENT_ERROR.search, parts) if m), None)
        said = [_server_message(part) for part in parts if not _CLIENT_ERROR.fullmatch(part)]
        reason = "; ".join(filter(None, said)) or " ".join(parts)
        refusals[name] = (f"model server answered {status}: {reason}" if status else reason, status)
    return refusals


def _server_message(text: str) -> str:
    """The ``message`` of the model server's JSON error, else the text as it is."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text
    return str(body.get("message", text)) if isinstance(body, dict) else text


# --- the job ----------------------------------------------------------------------------------


class BatchTransform:
    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage | None = None,
        sagemaker=None,
        logs=None,
        hosting: SageMakerHosting | None = None,
        options: TransformOptions | None = None,
    ):
        self.settings = settings
        self.options = options or TransformOptions()
        self.storage = storage or open_storage(settings)
        self.sagemaker = sagemaker or aws_client("sagemaker", settings.region)
        self.logs = logs or aws_client("logs", settings.region)
        self.hosting = hosting or SageMakerHosting(
            settings, sagemaker=self.sagemaker, storage=self.storage, progress=self.options.progress
        )

    # -- keys ----------------------------------------------------------------------

    def _job_key(self, job: str, rest: str) -> str:
        return f"{self.settings.transform_prefix}/{job}/{rest}"

    def _uri(self, key: str) -> str:
        return f"s3://{self.settings.bucket}/{key}"

    def offered_instance_types(self) -> tuple[str, ...]:
        return tuple(self.sagemaker.meta.service_model.shape_for("TransformInstanceType").enum)

    # -- the run -------------------------------------------------------------------

    def run(self, model: str, images: str | Path, out_csv: str | Path) -> TransformResult:
        """Score ``images`` with ``model`` (a job, ``latest`` or ``live``) on Batch Transform; write ``out_csv``."""

        started = time.monotonic()
        self.options.check()
        instance_type, note = choose_instance_type(
            self.options.instance_type, self.settings.serving_instance_type, self.offered_instance_types()
        )
        registry = Registry(self.storage, self.settings)
        version = registry.resolve(model)
        # The model first: a missing serving image or role stops us before any image is uploaded.
        model_name = self.hosting.ensure_model(ModelSpec(version, registry.artifact_key(version)))
        job = transform_job_name(self.settings.endpoint_name)
        staged = self.stage(images, job)
        notes = [note] if note else []
        if not staged.names:
            batch = BatchResult(0, staged.refused, time.monotonic() - started)
            write_submission(batch, out_csv)
            return TransformResult(None, "not started", instance_type, self.options.instance_count, batch, notes)
        manifest = self._job_key(job, "input.manifest")
        self.storage.put_bytes(manifest, json.dumps([{"prefix": self._uri(staged.prefix)}, *staged.names]).encode())
        request = transform_request(
            job,
            model_name,
            version,
            self._uri(manifest),
            self._uri(self._job_key(job, "output/")),
            staged.content_type,
            instance_type,
            self.options,
            self.settings.kms_key_id,
        )
        self.sagemaker.create_transform_job(**request)
        described = self.wait(job, len(staged.names))
        batch, unexplained = self.collect(job, staged, described)
        batch.seconds = time.monotonic() - started
        write_submission(batch, out_csv)
        status = described["TransformJobStatus"]
        result = TransformResult(job, status, instance_type, self.options.instance_count, batch, notes)
        if unexplained:
            result.error = (
                f"transform job {job} {status.lower()} ({described.get('FailureReason') or 'no reason given'})"
                f": {len(unexplained)} of {len(staged.names)} images have no output and no refusal from "
                f"the model server; the {len(batch.names)} scored are in {out_csv}"
            )
        elif status == "Failed":
            result.notes.append("SageMaker marks a job Failed when any image is refused; every refusal is listed")
        return result

    # -- 1. the images ----------------------------------------------------------------

    def stage(self, images: str | Path, job: str) -> StagedImages:
        """Check every image; upload a local directory's accepted ones; the job's input, with what was refused."""
        prefix, names, read, upload = self._source(images, job)
        limit = self.options.body_limit

        def check(name: str) -> str | None:
            try:
                data = read(name)
            except (OSError, KeyNotFound) as error:
                return f"cannot be read: {error}"
            if len(data) > limit:
                return f"{len(data)} bytes, more than the {limit} bytes one request may carry"
            try:
                check_image_bytes(data)
            except ImageError as error:
                return str(error)
            if upload is not None:
                upload(name, data)
            return None

        accepted, refused = [], []
        desc = "check and upload" if upload else "check"
        with (
            ThreadPoolExecutor(self.options.workers) as pool,
            tqdm(total=len(names), unit="img", desc=desc, disable=not self.options.progress) as bar,
        ):
            for name, reason in zip(names, pool.map(check, names)):
                (refused.append((name, reason)) if reason else accepted.append(name))
                bar.update(1)
        return StagedImages(prefix, accepted, refused)

    def _source(self, images: str | Path, job: str):
        """``(key prefix of the job's input, names, read(name), upload(name, bytes) or None)``."""
        if str(images).startswith("s3://"):
            prefix = self._readable_prefix(str(images))
            names = [
                key[len(prefix) :]
                for key in self.storage.list_keys(prefix)
                if Path(key).suffix.lower() in CONTENT_TYPES
            ]
            read, upload = (lambda name: self.storage.get_bytes(prefix + name)), None
        else:
            by_name = {path.name: path for path in list_images(images)}
            names = sorted(by_name)
            prefix = self._job_key(job, "input/")
            read = lambda name: by_name[name].read_bytes()  # noqa: E731
            upload = lambda name, data: self.storage.put_bytes(prefix + name, data)  # noqa: E731
        if not names:
            raise TransformInputError(f"no JPEG or PNG images in {str(images)!r}")
        return prefix, names, read, upload

    def _readable_prefix(self, uri: str) -> str:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        allowed = f"{self.settings.transform_prefix}/"
        if bucket != self.settings.bucket or not key.startswith(allowed):
            raise TransformInputError(
                f"{uri!r} is outside s3://{self.settings.bucket}/{allowed}, the only place the SageMaker execution "
                f"role reads images from: copy them there (aws s3 sync DIR s3://{self.settings.bucket}/{allowed}NAME/) "
                "or pass a local directory"
            )
        return key.rstrip("/") + "/"

    # -- 3. the wait --------------------------------------------------------------------

    def wait(self, job: str, expected: int) -> dict:
        """Poll until the job ends, counting its outputs; Ctrl-C stops the job before it bills on."""

        output_prefix = self._job_key(job, "output/")
        bar_format = "{desc}: {n_fmt}/{total_fmt} images out [{elapsed}] {postfix}"
        with tqdm(total=expected, desc=job, bar_format=bar_format, disable=not self.options.progress) as bar:
            try:
                while True:
                    described = self.sagemaker.describe_transform_job(TransformJobName=job)
                    status = described["TransformJobStatus"]
                    bar.n = self._outputs_so_far(output_prefix, bar.n)
                    bar.set_postfix_str(status)
                    if status in TERMINAL:
                        return described
                    time.sleep(self.options.poll_seconds)
            except KeyboardInterrupt:
                self._stop(job)
                raise

    def _outputs_so_far(self, output_prefix: str, last: int) -> int:
        try:
            return sum(1 for key in self.storage.list_keys(output_prefix) if key.endswith(OUTPUT_SUFFIX))
        except (ClientError, BotoCoreError):  # the count is a courtesy: the wait goes on without it
            return last

    def _stop(self, job: str) -> None:
        try:
            self.sagemaker.stop_transform_job(TransformJobName=job)
        except ClientError as error:  # it ended meanwhile: nothing left to stop
            if error.response.get("Error", {}).get("Code") != "ValidationException":
                raise

    # -- 4. the submission ---------------------------------------------------------------

    def collect(self, job: str, staged: StagedImages, described: dict) -> tuple[BatchResult, list[str]]:
        """Every image's output in input order, the refused and unreadable listed; and the images whose
        output is missing with no refusal by the model server to explain it."""
        output_prefix = self._job_key(job, "output/")
        found = match_outputs(staged.names, self.storage.list_keys(output_prefix), output_prefix)

        def read(name: str) -> np.ndarray | str | None:
            if name not in found:
                return None
            try:
                return parse_output(self.storage.get_bytes(found[name]))
            except (ValueError, KeyNotFound) as error:
                return str(error)

        names, rows, failed, missing = [], [], list(staged.refused), []
        with ThreadPoolExecutor(self.options.workers) as pool:
            for name, row in zip(staged.names, pool.map(read, staged.names)):
                if isinstance(row, np.ndarray):
                    names.append(name)
                    rows.append(row)
                elif row is None:
                    missing.append(name)
                else:
                    failed.append((name, row))
        unexplained = []
        if missing:
            refusals, trouble = self._refusals(job, staged.prefix)
            for name in missing:
                reason, status = refusals.get(name, (None, None))
                if status is not None and 400 <= status < 500:
                    failed.append((name, reason))
                    continue
                unexplained.append(name)
                failed.append(
                    (
                        name,
                        reason
                        or f"no output: job {described['TransformJobStatus'].lower()}"
                        f" ({described.get('FailureReason') or 'no reason given'}){trouble}",
                    )
                )
        probabilities = np.stack(rows) if rows else np.zeros((0, len(CLASSES)), np.float32)
        return BatchResult(len(names), failed, names=names, probabilities=probabilities), unexplained

    def _refusals(self, job: str, prefix: str) -> tuple[dict[str, tuple[str, int | None]], str]:
        """What the job's data log says of each refused object, and a note when the log could not be read."""
        lines = []
        try:
            pages = self.logs.get_paginator("filter_log_events").paginate(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job}/"
            )
            for page in pages:
                lines += [event["message"] for event in page.get("events", [])]
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code != "ResourceNotFoundException":
                return {}, f"; its log in {LOG_GROUP} could not be read ({code})"
        except BotoCoreError as error:
            return {}, f"; its log in {LOG_GROUP} could not be read ({error})"
        return refusals_from_log(lines, f"{self.settings.bucket}/{prefix}"), ""


def run_batch_transform(
    settings: Settings, model: str, images: str | Path, out_csv: str | Path, options: TransformOptions | None = None
) -> TransformResult:
    """``inv predict.batch --backend aws``: Batch Transform over ``images`` into ``out_csv``."""
    return BatchTransform(settings, options=options).run(model, images, out_csv)
