"""What SageMaker does between CreateTransformJob and the job's end, which moto does not do.

moto stores a transform job and answers DescribeTransformJob ("Completed" at once), but runs
nothing. ``TransformAgent`` plays SageMaker's part against moto's S3, SageMaker and CloudWatch
Logs, with our real serving container: it reads the job as DescribeTransformJob gives it, fetches
the model's ``model.tar.gz`` (DescribeModel's ``ModelDataUrl``), unpacks it and starts the serving
image's entry point (``scripts/serve.py serve``, as SageMaker starts it, on a free port of
127.0.0.1 given by ``SAGEMAKER_BIND_TO_PORT``, with ``SM_MODEL_DIR``), waits for ``/ping``, then
POSTs every object the manifest names to ``/invocations`` (the job's ContentType and Accept,
``MaxConcurrentTransforms`` at a time). A 200 becomes ``<S3OutputPath><name>.out`` holding the
body; any other answer leaves no output, writes the data-log lines SageMaker writes
(``[sagemaker logs]: <bucket>/<key>: ClientError: 400``, ``Message:``, the body) and marks the
job Failed, as SageMaker does. ``die_after`` makes the container die after that many images
(the job then fails with an AlgorithmError and no data-log line for the rest).

It runs on a thread of its own, so no frame of ours is on its stack: the IAM recorder
(``tests/iam_recorder.py``) leaves its calls out, as they are SageMaker's, not CodeBuild's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import boto3
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
LOG_GROUP = "/aws/sagemaker/TransformJobs"
START_TIMEOUT_S = 60


def _s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _http(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


class ServingContainer:
    """``scripts/serve.py serve`` over an unpacked model, bound to 127.0.0.1."""

    def __init__(self, model_dir: Path, log_path: Path):
        # Port 0 through SAGEMAKER_BIND_TO_PORT: the server logs the port it got.
        env = {**os.environ, "SM_MODEL_DIR": str(model_dir), "SAGEMAKER_BIND_TO_PORT": "0"}
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "serve.py"), "serve", "--host", "127.0.0.1"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        found = wait_until(
            lambda: re.search(r"listening on (http://127\.0\.0\.1:\d+)", log_path.read_text()),
            START_TIMEOUT_S,
            what="the serving container's port",
            process=self.process,
            details=log_path.read_text,
        )
        self.url = found.group(1)
        wait_until(
            lambda: _http(self.url + "/ping")[0] == 200,
            START_TIMEOUT_S,
            what="the serving container's /ping",
            process=self.process,
            details=log_path.read_text,
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class TransformAgent:
    def __init__(self, workdir: Path, die_after: int | None = None):
        self.workdir = workdir
        self.die_after = die_after
        self.jobs: list[str] = []
        self.requests: list[tuple[str, str, str]] = []  # (key, content type, accept)

    def attach(self, sagemaker_client) -> None:
        """Run each job the client creates, on a thread of its own, before CreateTransformJob returns."""
        created: list[str] = []

        def before(params, **_):
            created.append(params["TransformJobName"])

        def after(**_):
            failure: list[BaseException] = []

            def run():
                try:
                    self.run(created[-1])
                except BaseException as error:  # surfaces in the test, not in a stray thread
                    failure.append(error)

            worker = threading.Thread(target=run, name="transform-agent")
            worker.start()
            worker.join()
            if failure:
                raise failure[0]

        sagemaker_client.meta.events.register("before-parameter-build.sagemaker.CreateTransformJob", before)
        sagemaker_client.meta.events.register("after-call.sagemaker.CreateTransformJob", after)

    def run(self, name: str) -> None:
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        job = sagemaker.describe_transform_job(TransformJobName=name)
        self.jobs.append(name)
        model = sagemaker.describe_model(ModelName=job["ModelName"])["PrimaryContainer"]
        model_dir = Path(tempfile.mkdtemp(prefix="model-", dir=self.workdir))
        bucket, key = _s3(model["ModelDataUrl"])
        tar_path = model_dir / "model.tar.gz"
        s3.download_file(bucket, key, str(tar_path))
        with tarfile.open(tar_path) as tar:
            tar.extractall(model_dir, filter="data")
        source = job["TransformInput"]["DataSource"]["S3DataSource"]
        assert source["S3DataType"] == "ManifestFile", source
        bucket, key = _s3(source["S3Uri"])
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        in_bucket, in_prefix = _s3(manifest[0]["prefix"])
        out_bucket, out_prefix = _s3(job["TransformOutput"]["S3OutputPath"])
        headers = {"Content-Type": job["TransformInput"]["ContentType"], "Accept": job["TransformOutput"]["Accept"]}
        container = ServingContainer(model_dir, self.workdir / f"{name}.log")
        refused: list[tuple[str, int, bytes]] = []
        done = 0
        died = False
        try:
            with ThreadPoolExecutor(job["MaxConcurrentTransforms"]) as pool:

                def one(relative: str):
                    body = s3.get_object(Bucket=in_bucket, Key=in_prefix + relative)["Body"].read()
                    self.requests.append((in_prefix + relative, headers["Content-Type"], headers["Accept"]))
                    return relative, *_http(container.url + "/invocations", body, headers)

                for relative, status, answer in pool.map(one, manifest[1:]):
                    if self.die_after is not None and done >= self.die_after:
                        died = True
                        break
                    if status == 200:
                        s3.put_object(Bucket=out_bucket, Key=f"{out_prefix}{relative}.out", Body=answer)
                        done += 1
                    else:
                        refused.append((f"{in_bucket}/{in_prefix}{relative}", status, answer))
        finally:
            container.kill() if died else container.stop()
        if refused:
            self._data_log(name, refused)
        if died:
            self._end(name, "Failed", "AlgorithmError: the container exited unexpectedly (see job logs)")
        elif refused:
            self._end(name, "Failed", "ClientError: See job logs for more information")

    def _data_log(self, job: str, refused: list[tuple[str, int, bytes]]) -> None:
        logs = boto3.client("logs", region_name=REGION)
        try:
            logs.create_log_group(logGroupName=LOG_GROUP)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        stream = f"{job}/i-0c0ffee0c0ffee0c0/data-log"
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}"
        millis = int(now.timestamp() * 1000)
        lines = [f"{stamp}:[sagemaker logs]: MaxConcurrentTransforms=8, MaxPayloadInMB=6, BatchStrategy=SINGLE_RECORD"]
        for obj, status, body in refused:
            lines += [
                f"{stamp}:[sagemaker logs]: {obj}: ClientError: {status}",
                f"{stamp}:[sagemaker logs]: {obj}: ",
                f"{stamp}:[sagemaker logs]: {obj}: Message:",
                f"{stamp}:[sagemaker logs]: {obj}: {body.decode()}",
            ]
        logs.put_log_events(
            logGroupName=LOG_GROUP,
            logStreamName=stream,
            logEvents=[{"timestamp": millis, "message": line} for line in lines],
        )

    @staticmethod
    def _end(job: str, status: str, reason: str) -> None:
        """moto marks every job Completed; SageMaker ends this one otherwise."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.sagemaker.models import sagemaker_backends

        fake = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].transform_jobs[job]
        fake.transform_job_status, fake.failure_reason = status, reason


IMAGE_MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 7,
            "digest": "sha256:" + "c" * 64,
        },
        "layers": [],
    }
)


def push_serving_image(repository: str, tag: str) -> None:
    """What `inv infra.push-image` leaves in ECR (moto's)."""
    ecr = boto3.client("ecr", region_name=REGION)
    ecr.create_repository(repositoryName=repository, imageTagMutability="IMMUTABLE")
    ecr.put_image(repositoryName=repository, imageManifest=IMAGE_MANIFEST, imageTag=tag)
