"""Shared pieces of the hosting tests: a hosted environment, a bounded client loop, faulty models.

The faulty models are real ONNX graphs served by the real model server; each
fails the way a bad export fails in practice:

- ``without_softmax``: the export forgot the softmax. The server loads it and
  answers /ping, but its "probabilities" are logits: only the smoke test sees it;
- ``wrong_class_count``: answers five classes; the server's warm-up refuses it,
  so the instance never becomes healthy;
- ``fails_on_dark_frames``: a graph with a branch that breaks (a Reshape to an
  impossible shape) when the batch is very dark, as night-time frames are. The
  server's warm-up frame and the daytime smoke images pass; production traffic
  at night makes it answer 500s, which only the canary's alarms can catch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import cv2
import numpy as np
import onnx
import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from model_fixtures import FixtureArtifact, build_artifact, tiny_onnx_model
from onnx import TensorProto, helper, numpy_helper
from waiting import wait_until

from distracted_driver.config import Settings
from distracted_driver.hosting.aws import rollback_alarm_names
from distracted_driver.hosting.local import LocalHosting
from distracted_driver.hosting.local.instances import OWNER_ENV
from distracted_driver.hosting.smoke import drawn_images
from distracted_driver.model import artifact as contract
from distracted_driver.storage import open_storage

# --- a hosted environment --------------------------------------------------------------


@dataclass
class Hosted:
    settings: Settings
    storage: object
    hosting: LocalHosting
    smoke: list[bytes]

    def publish(self, artifact: FixtureArtifact) -> str:
        return artifact.publish(self.storage, self.settings)  # also registers the version

    def url(self) -> str:
        return self.hosting.status().runtime_url

    def client(self, retries: int = 1):
        """boto3's real sagemaker-runtime client, dummy credentials, no retries unless asked."""
        return boto3.client(
            "sagemaker-runtime",
            endpoint_url=self.url(),
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"mode": "standard", "max_attempts": retries}, read_timeout=30),
        )


def our_processes(settings: Settings) -> list[psutil.Process]:
    """The supervisor, the runtime daemon and every model server it started (marked in their environment)
    for this state directory."""
    state_dir = str(Path(settings.state_dir).resolve())
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info.get("cmdline") or [])
        if "distracted_driver" not in command and "supervisord" not in command:
            continue
        with contextlib.suppress(psutil.Error):
            owner = process.environ().get(OWNER_ENV, "")
            if state_dir in command or owner.startswith(state_dir):
                found.append(process)
    return found


@contextlib.contextmanager
def hosted_env(root: Path):
    """A fresh bucket, state directory and LocalHosting under ``root``; on exit, everything it started is stopped."""
    settings = Settings(root=root)
    storage = open_storage(settings)
    hosting = LocalHosting(settings, storage=storage, instance_threads=1, startup_timeout_seconds=30)
    try:
        yield Hosted(settings, storage, hosting, drawn_images(2))
    finally:
        hosting.stop_runtime()
        leftovers = our_processes(settings)
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert not leftovers, f"processes left running: {[p.info['cmdline'] for p in leftovers]}"


@pytest.fixture
def hosted(tmp_path):
    with hosted_env(tmp_path) as env:
        yield env


# --- a bounded client loop ---------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    version: str | None = None
    variant: str | None = None
    error: str | None = None
    original_status: int | None = None
    at: float = field(default_factory=time.monotonic)  # when the answer (or the failure) came


@dataclass
class LoadLoop:
    """Threads that invoke the endpoint back to back until stopped (bounded in count and time).

    Each thread calls ``sender()`` once for its own ``send(image) -> Outcome``;
    by default that is boto3's sagemaker-runtime client on ``hosted``'s endpoint.
    """

    hosted: Hosted | None
    images: list[bytes]
    threads: int = 2
    max_requests: int = 3000
    max_seconds: float = 90.0
    pause_s: float = 0.0
    sender: Callable[[], Callable[[bytes], Outcome]] | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)]

    def __enter__(self) -> LoadLoop:
        self._deadline = time.monotonic() + self.max_seconds
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=40)
        return self.outcomes

    def _boto3_sender(self) -> Callable[[bytes], Outcome]:
        client = self.hosted.client()
        name = self.hosted.settings.endpoint_name

        def send(image: bytes) -> Outcome:
            try:
                answer = client.invoke_endpoint(EndpointName=name, ContentType="image/jpeg", Body=image)
                answer["Body"].read()
                return Outcome(
                    True,
                    answer["ResponseMetadata"]["HTTPHeaders"].get("x-model-version"),
                    answer["InvokedProductionVariant"],
                )
            except ClientError as error:
                return Outcome(
                    False,
                    error=error.response["Error"]["Code"],
                    original_status=error.response.get("OriginalStatusCode"),
                )

        return send

    def _run(self, number: int) -> None:
        send = self.sender() if self.sender else self._boto3_sender()
        sent = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline and len(self.outcomes) < self.max_requests:
            image = self.images[(sent + number) % len(self.images)]
            sent += 1
            try:
                outcome = send(image)
            except Exception as error:  # a transport failure is a failed request too
                outcome = Outcome(False, error=repr(error))
            with self._lock:
                self.outcomes.append(outcome)
            if self.pause_s:
                time.sleep(self.pause_s)  # the client's pace, not a wait

    def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        """Until ``count`` requests are answered, or the loop ended by itself (its deadline, its maximum)."""
        wait_until(
            lambda: len(self.outcomes) >= count or not any(w.is_alive() for w in self._workers),
            timeout_s,
            what=f"{count} requests answered",
        )


# --- images ---------------------------------------------------------------------------------


def night_frames(count: int = 2) -> list[bytes]:
    """The smoke test's cabin scenes as a camera sees them at night: nearly black."""
    frames = []
    for image in drawn_images(count, seed=7):
        dark = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR) // 12
        frames.append(cv2.imencode(".jpg", dark)[1].tobytes())
    return frames


# --- faulty but real models ---------------------------------------------------------------------


def _with_graph(root: Path, version: str, seed: int, model: onnx.ModelProto) -> FixtureArtifact:
    """A fixture artifact whose model.onnx is replaced by ``model`` (repacked through the contract)."""
    built = build_artifact(root, version, seed)
    onnx.checker.check_model(model)
    onnx.save(model, built.directory / contract.MODEL_FILE)
    contract.pack_artifact(built.directory, built.tar_path)
    return built


def without_softmax(root: Path, version: str, seed: int = 5) -> FixtureArtifact:
    model = tiny_onnx_model(seed)
    graph = model.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    graph.node.remove(softmax)
    next(n for n in graph.node if n.op_type == "Gemm").output[0] = contract.OUTPUT_NAME
    return _with_graph(root, version, seed, model)


def wrong_class_count(root: Path, version: str, seed: int = 6) -> FixtureArtifact:
    model = tiny_onnx_model(seed)
    graph = model.graph
    next(n for n in graph.node if n.op_type == "Softmax").output[0] = "all_classes"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "slice_start"),
            numpy_helper.from_array(np.array([5], np.int64), "slice_end"),
            numpy_helper.from_array(np.array([1], np.int64), "slice_axis"),
        ]
    )
    graph.node.append(
        helper.make_node("Slice", ["all_classes", "slice_start", "slice_end", "slice_axis"], [contract.OUTPUT_NAME])
    )
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    return _with_graph(root, version, seed, model)


def fails_on_dark_frames(root: Path, version: str, seed: int = 8, darkness: float = -0.8) -> FixtureArtifact:
    """Normal answers unless the batch's mean normalised pixel is below ``darkness`` (about -1 is black)."""
    model = tiny_onnx_model(seed)
    graph = model.graph
    next(n for n in graph.node if n.op_type == "Softmax").output[0] = "softmax"
    broken = helper.make_graph(
        [helper.make_node("Reshape", ["softmax", "impossible_shape"], ["broken_out"])],
        "dark-branch",
        [],
        [helper.make_tensor_value_info("broken_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([3, 7], np.int64), "impossible_shape")],
    )
    normal = helper.make_graph(
        [helper.make_node("Identity", ["softmax"], ["normal_out"])],
        "day-branch",
        [],
        [helper.make_tensor_value_info("normal_out", TensorProto.FLOAT, None)],
    )
    graph.initializer.append(numpy_helper.from_array(np.array(darkness, np.float32), "darkness"))
    graph.node.extend(
        [
            helper.make_node("ReduceMean", [contract.INPUT_NAME], ["brightness"], keepdims=0),
            helper.make_node("Less", ["brightness", "darkness"], ["is_dark"]),
            helper.make_node("If", ["is_dark"], [contract.OUTPUT_NAME], then_branch=broken, else_branch=normal),
        ]
    )
    return _with_graph(root, version, seed, model)


def put_rollback_alarms(endpoint_name: str) -> None:
    """The CloudWatch alarms Terraform's alarms module makes for ``endpoint_name`` (on moto), which a
    SageMaker update names in its AutoRollbackConfiguration."""
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    for name in rollback_alarm_names(endpoint_name):
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Namespace="AWS/SageMaker",
            MetricName="ModelLatency",
            Statistic="Average",
            Period=60,
            EvaluationPeriods=2,
            Threshold=2_000_000,
            ComparisonOperator="GreaterThanThreshold",
        )
