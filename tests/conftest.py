"""Fixtures shared across the test suite (each helper appends its own block)."""

from __future__ import annotations

import pytest

# --- serve: small real model artifacts (tests/model_fixtures.py) ---------------


@pytest.fixture(scope="session")
def make_artifact(tmp_path_factory):
    """Factory ``make_artifact(version="test-model-1", seed=0, input_size=64, metrics=None) -> FixtureArtifact``.

    A real tiny ONNX classifier packed as ``model.tar.gz``; ``.directory`` is
    the unpacked artifact, ``.tar_path`` the tar, ``.publish(storage, settings)``
    puts it at ``models/<version>/output/model.tar.gz`` and registers it in the
    registry (``register=False`` to skip). Same arguments, same artifact
    (built once per session); other arguments, another artifact.
    """
    from model_fixtures import build_artifact

    root = tmp_path_factory.mktemp("artifacts")
    built = {}

    def make(version: str = "test-model-1", seed: int = 0, input_size: int = 64, metrics: dict | None = None):
        key = (version, seed, input_size, tuple(sorted((metrics or {}).items())))
        if key not in built:
            # Tests in different files may reuse a version name with other weights or metrics.
            built[key] = build_artifact(root / str(len(built)), version, seed, input_size, metrics)
        return built[key]

    return make


# --- api: the local REST stack (tests/api_stack.py) ------------------------------


@pytest.fixture(scope="session")
def api_stack(tmp_path_factory, make_artifact):
    """Local endpoint (one model server, tiny real model) + API gateway daemon; stopped at session end.

    ``.url``, ``.predict_url``, ``.api_key``, ``.runtime_url``, ``.model_version``,
    ``.settings``, ``.process_ids()`` (gateway and model server pids).
    """
    from api_stack import start_stack

    stack = start_stack(tmp_path_factory.mktemp("api-stack"), make_artifact("api-model-1", seed=3))
    yield stack
    stack.close()


# --- train: tiny real channels and one real training job (tests/train_support.py) ---


@pytest.fixture(scope="session")
def tiny_channels(tmp_path_factory):
    """Directory with ``train/``, ``validation/`` (RecordIO) and ``manifest.json`` from a 6-driver sample."""
    from train_support import build_tiny_channels

    return build_tiny_channels(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory, tiny_channels):
    """A real frozen-backbone training job (2 epochs) run by ``run_local_job`` on a local bucket.

    Returns ``TrainedJob(settings, job)``: ``settings.bucket_dir`` holds ``data/``,
    ``models/<job>/output/model.tar.gz`` and the registry entry of ``job``.
    """
    from train_support import TINY_HYPERPARAMETERS, TrainedJob, bucket_with_channels

    from distracted_driver.train.runner import run_local_job

    settings = bucket_with_channels(tmp_path_factory.mktemp("trained-job"), tiny_channels)
    return TrainedJob(settings, run_local_job(settings, TINY_HYPERPARAMETERS, stream=None))


# --- aws: moto's in-process AWS for the boto3 backend (storage.s3, hosting.aws, train.sagemaker, trigger) ---


@pytest.fixture
def aws(monkeypatch):
    """Every AWS service mocked by moto, dummy credentials, region us-east-1; nothing real is reachable."""
    from moto import mock_aws

    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


VALID_ANSWER = ("[" + ", ".join(["0.1"] * 10) + "]").encode()  # ten probabilities: what a model server answers


@pytest.fixture
def runtime_answers(aws, monkeypatch):
    """SageMaker Runtime clients made from now on answer every InvokeEndpoint with ``VALID_ANSWER``, or what
    ``answer(body)`` sets first. botocore's Stubber, which checks each request against the service model:
    moto's own InvokeEndpoint reads the request body as text, which a JPEG is not."""
    import io

    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import ANY, Stubber

    current = {"body": VALID_ANSWER}
    make_client = boto3.session.Session.client

    def client(self, service, *args, **kwargs):
        made = make_client(self, service, *args, **kwargs)
        if service == "sagemaker-runtime":
            stub = Stubber(made)
            for _ in range(200):
                body = current["body"]
                stub.add_response(
                    "invoke_endpoint",
                    {
                        "Body": StreamingBody(io.BytesIO(body), len(body)),
                        "ContentType": "application/json",
                        "InvokedProductionVariant": "AllTraffic",
                    },
                    {"EndpointName": ANY, "Body": ANY, "ContentType": ANY, "Accept": ANY},
                )
            stub.activate()
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)

    def answer(body: bytes) -> None:
        current["body"] = body

    return answer
