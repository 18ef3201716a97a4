"""Batch Transform (``predict.batch --backend aws``): moto for S3, SageMaker's models and jobs, ECR and
CloudWatch Logs; ``tests/transform_support.py`` plays SageMaker's transform agent with our real serving
container; botocore's Stubber where moto lacks the job's life (InProgress, Stopping, StopTransformJob).

Every request is validated by botocore against the service model, on moto and on the Stubber alike.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import json
import time
from pathlib import Path

import boto3
import cv2
import numpy as np
import pytest
from botocore.stub import ANY, Stubber
from botocore.validate import ParamValidator
from hostile_images import camera_like_jpeg, corrupt_jpegs
from invoke import Config, Context
from invoke.exceptions import Exit
from transform_support import TransformAgent, push_serving_image

from distracted_driver.config import Settings
from distracted_driver.data.layout import CLASSES
from distracted_driver.hosting.batch_transform import (
    MIXED_CONTENT_TYPE,
    BatchTransform,
    TransformInputError,
    TransformOptions,
    choose_instance_type,
    match_outputs,
    parse_output,
    refusals_from_log,
    transform_job_name,
    transform_request,
)
from distracted_driver.model.artifact import load_artifact
from distracted_driver.serve.batch_predict import predict_images
from distracted_driver.storage.s3 import S3Storage

pytestmark = pytest.mark.moto  # moto servers and a serving container process (about 20 s)

REPO = Path(__file__).resolve().parents[1]
BUCKET = "dd-transform-bucket"
ROLE = "arn:aws:iam::123456789012:role/dd-dev-sagemaker"
REPOSITORY, TAG = "dd-dev-serving", "0123abcd"
IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPOSITORY}:{TAG}"
VERSION = "dd-20260101-000000-aaaa"
KEY = "arn:aws:kms:us-east-1:123456789012:key/0c0ffee0-0000-4000-8000-000000000000"
GOOD = [f"img_{i}.jpg" for i in range(5)]
OFFERED = tuple(
    boto3.client("sagemaker", region_name="us-east-1").meta.service_model.shape_for("TransformInstanceType").enum
)


def _settings(tmp_path) -> Settings:
    return Settings(backend="aws", root=tmp_path, bucket=BUCKET, role_arn=ROLE, serving_image=IMAGE, kms_key_id=KEY)


@pytest.fixture(scope="module")
def model(make_artifact):
    return make_artifact(VERSION, seed=7)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Five camera-like JPEGs and a PNG; an image the check refuses (no header), one cut in half, one whose
    scan data only a decode finds corrupt, and a file that is no image."""
    directory = tmp_path_factory.mktemp("imgs") / "test"
    directory.mkdir()
    for i, name in enumerate(GOOD):
        (directory / name).write_bytes(camera_like_jpeg(seed=i))
    cv2.imwrite(str(directory / "img_png.png"), cv2.imdecode(np.frombuffer(camera_like_jpeg(seed=9), np.uint8), 1))
    (directory / "img_corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    whole = camera_like_jpeg(seed=11)
    (directory / "img_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (directory / "img_scan.jpg").write_bytes(corrupt_jpegs()["garbage before the end marker"][0])
    (directory / "notes.txt").write_text("not an image")
    return directory


@pytest.fixture
def account(aws, tmp_path, model):
    """What `terraform apply`, `infra.push-image` and a training run leave: the bucket, the serving image, and
    a registered model version."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    push_serving_image(REPOSITORY, TAG)
    settings = _settings(tmp_path)
    storage = S3Storage(BUCKET)
    model.publish(storage, settings)
    return settings, storage


def _transform(settings, storage, tmp_path, die_after=None, **options):
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    agent = TransformAgent(tmp_path, die_after=die_after)
    agent.attach(sagemaker)
    runner = BatchTransform(
        settings,
        storage=storage,
        sagemaker=sagemaker,
        options=TransformOptions(poll_seconds=0, progress=False, **options),
    )
    return runner, agent


def _rows(path: Path) -> dict[str, list[float]]:
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["img", *CLASSES]
    return {row[0]: [float(p) for p in row[1:]] for row in rows[1:]}


# --- the request, names, options, parsing ---------------------------------------------------------


def test_the_request_fits_the_service_model_one_image_per_request():
    options = TransformOptions(instance_count=2, max_concurrent=16, max_payload_mb=6)
    request = transform_request(
        "distracted-driver-batch-20260101-000000-abcd",
        f"distracted-driver-{VERSION}",
        VERSION,
        "s3://b/transform/j/input.manifest",
        "s3://b/transform/j/output/",
        "image/jpeg",
        "ml.c5.xlarge",
        options,
        KEY,
    )
    model = boto3.client("sagemaker", region_name="us-east-1").meta.service_model
    report = ParamValidator().validate(request, model.operation_model("CreateTransformJob").input_shape)
    assert not report.has_errors(), report.generate_report()
    assert request["TransformInput"]["SplitType"] == "None" and request["BatchStrategy"] == "SingleRecord"
    assert request["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    assert request["TransformOutput"] == {
        "S3OutputPath": "s3://b/transform/j/output/",
        "Accept": "application/json",
        "AssembleWith": "None",
        "KmsKeyId": KEY,
    }
    assert (request["MaxConcurrentTransforms"], request["TransformResources"]) == (
        16,
        {"InstanceType": "ml.c5.xlarge", "InstanceCount": 2},
    )
    assert request["TransformResources"]["InstanceType"] in OFFERED


def test_the_instance_type_is_the_serving_one_or_the_next_size_batch_transform_offers():
    assert "ml.c5.large" not in OFFERED  # the dev serving type
    assert choose_instance_type(None, "ml.c5.large", OFFERED) == (
        "ml.c5.xlarge",
        "Batch Transform does not offer ml.c5.large (the serving instance type): using ml.c5.xlarge",
    )
    assert choose_instance_type(None, "ml.c5.xlarge", OFFERED) == ("ml.c5.xlarge", "")
    assert choose_instance_type("ml.m5.4xlarge", "ml.c5.large", OFFERED) == ("ml.m5.4xlarge", "")
    with pytest.raises(
        TransformInputError,
        match="'ml.c5.large' is not an instance type Batch Transform offers; "
        "of its family Batch Transform offers ml.c5.xlarge",
    ):
        choose_instance_type("ml.c5.large", "ml.c5.xlarge", OFFERED)


@pytest.mark.parametrize(
    "options, words",
    [
        (TransformOptions(max_concurrent=0), "MaxConcurrentTransforms must be 1..64, not 0"),
        (TransformOptions(max_concurrent=65), "MaxConcurrentTransforms must be 1..64, not 65"),
        (TransformOptions(instance_count=0), "InstanceCount must be 1..100, not 0"),
        (TransformOptions(max_payload_mb=0), "MaxPayloadInMB must be 1..100, not 0"),
    ],
)
def test_options_outside_the_limits_are_refused(options, words):
    with pytest.raises(TransformInputError, match=words):
        options.check()


def test_job_names_fit_sagemaker_and_the_grant():
    name = transform_job_name("distracted-driver-dev", dt.datetime(2026, 1, 2, 3, 4, 5), "0a1b")
    assert name == "distracted-driver-dev-batch-20260102-030405-0a1b"
    with pytest.raises(TransformInputError, match="shorten the endpoint name"):
        transform_job_name("x" * 40)


def test_outputs_are_the_servers_ten_probabilities():
    assert parse_output(json.dumps([0.1] * 10).encode()).shape == (10,)
    for body, words in (
        (b"<html>", "not JSON"),
        (json.dumps([0.1] * 9).encode(), "not the list of 10"),
        (json.dumps({"class": "c0", "probabilities": [0.1] * 10}).encode(), "not the list of 10"),
        (json.dumps([0.5] * 10).encode(), "not a probability distribution"),
        (b"[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 1]", "not a probability distribution"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_output(body)


def test_outputs_are_matched_by_relative_name_then_by_unique_file_name():
    prefix = "transform/j/output/"
    keys = [
        f"{prefix}a.jpg.out",
        f"{prefix}sub/b.jpg.out",
        f"{prefix}test/c.jpg.out",
        f"{prefix}x/d.jpg.out",
        f"{prefix}y/d.jpg.out",
    ]
    assert match_outputs(["a.jpg", "sub/b.jpg", "c.jpg", "d.jpg", "e.jpg"], keys, prefix) == {
        "a.jpg": f"{prefix}a.jpg.out",
        "sub/b.jpg": f"{prefix}sub/b.jpg.out",
        "c.jpg": f"{prefix}test/c.jpg.out",
    }


def test_the_data_log_gives_each_refused_image_the_servers_message():
    lines = [
        "2026-01-01T00:00:00.000:[sagemaker logs]: MaxConcurrentTransforms=8, MaxPayloadInMB=6, BatchStrategy=SINGLE_RECORD",
        "2026-01-01T00:00:01.000:[sagemaker logs]: b/transform/j/input/img_9.jpg: ClientError: 400",
        "2026-01-01T00:00:01.000:[sagemaker logs]: b/transform/j/input/img_9.jpg: ",
        "2026-01-01T00:00:01.000:[sagemaker logs]: b/transform/j/input/img_9.jpg: Message:",
        '2026-01-01T00:00:01.000:[sagemaker logs]: b/transform/j/input/img_9.jpg: {"error": "InvalidImage", '
        '"message": "corrupt JPEG: premature end"}',
        "2026-01-01T00:00:02.000:[sagemaker logs]: b/transform/j/input/img_8.jpg: Unable to get response from algorithm",
        "2026-01-01T00:00:02.000:[sagemaker logs]: b/elsewhere/img_7.jpg: ClientError: 400",
    ]
    assert refusals_from_log(lines, "b/transform/j/input/") == {
        "img_9.jpg": ("model server answered 400: corrupt JPEG: premature end", 400),
        "img_8.jpg": ("Unable to get response from algorithm", None),
    }


# --- whole runs: moto, the agent, our serving container --------------------------------------------


def test_a_directory_is_scored_on_batch_transform_into_the_same_submission(account, images, model, tmp_path):
    settings, storage = account
    runner, agent = _transform(settings, storage, tmp_path)
    result = runner.run("latest", images, tmp_path / "submission.csv")

    assert result.error == "" and len(agent.jobs) == 1 and result.job == agent.jobs[0]
    # Batch prediction here, on the same images, gives the same rows: the .out bodies are the server's answers.
    scored = GOOD + ["img_png.png"]
    local = predict_images(load_artifact(model.directory), [images / name for name in scored], progress=False)
    rows = _rows(tmp_path / "submission.csv")
    assert list(rows) == sorted(scored) == result.batch.names
    for name, row in zip(local.names, local.probabilities):
        assert np.allclose(rows[name], row, atol=1e-5), name
    # The check refused two before the job; the model server refused the third; notes.txt is no image.
    failed = dict(result.batch.failed)
    assert set(failed) == {"img_corrupt.jpg", "img_truncated.jpg", "img_scan.jpg"}
    assert "header is incomplete" in failed["img_corrupt.jpg"] and "truncated" in failed["img_truncated.jpg"]
    assert (
        failed["img_scan.jpg"].startswith("model server answered 400: corrupt JPEG")
        and "extraneous bytes" in failed["img_scan.jpg"]
    )
    # SageMaker marks the job Failed for the refusal: listed, not fatal.
    assert result.status == "Failed" and any("every refusal is listed" in note for note in result.notes)
    assert "Batch Transform does not offer ml.c5.large" in result.notes[0] and result.instance_type == "ml.c5.xlarge"

    job = boto3.client("sagemaker", region_name="us-east-1").describe_transform_job(TransformJobName=result.job)
    assert job["ModelName"] == f"{settings.endpoint_name}-{VERSION}" and job["TransformInput"]["SplitType"] == "None"
    assert job["TransformInput"]["ContentType"] == MIXED_CONTENT_TYPE  # JPEGs and a PNG
    container = boto3.client("sagemaker", region_name="us-east-1").describe_model(ModelName=job["ModelName"])
    assert container["PrimaryContainer"]["Image"] == IMAGE  # the serving image, over the served artifact
    assert container["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/models/{VERSION}/output/model.tar.gz"
    # Only what passed the check was uploaded and named in the manifest.
    uploaded = storage.list_keys(f"transform/{result.job}/input/")
    assert uploaded == [f"transform/{result.job}/input/{name}" for name in sorted(scored + ["img_scan.jpg"])]
    manifest = json.loads(storage.get_bytes(f"transform/{result.job}/input.manifest"))
    assert manifest == [{"prefix": f"s3://{BUCKET}/transform/{result.job}/input/"}, *sorted(scored + ["img_scan.jpg"])]


def test_an_s3_prefix_is_checked_where_it_lies(account, tmp_path):
    settings, storage = account
    rng = np.random.default_rng(0)
    big = cv2.imencode(".jpg", rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])[
        1
    ].tobytes()
    assert len(big) > 1024 * 1024
    for i, name in enumerate(GOOD):
        storage.put_bytes(f"transform/kaggle-test/{name}", camera_like_jpeg(seed=20 + i))
    storage.put_bytes("transform/kaggle-test/img_big.jpg", big)
    storage.put_bytes("transform/kaggle-test/readme.txt", b"not an image")
    runner, agent = _transform(settings, storage, tmp_path, max_payload_mb=1, instance_type="ml.m5.xlarge")
    result = runner.run("latest", f"s3://{BUCKET}/transform/kaggle-test", tmp_path / "s3.csv")

    assert (result.error, result.status, result.instance_type) == ("", "Completed", "ml.m5.xlarge")
    assert list(_rows(tmp_path / "s3.csv")) == GOOD
    assert [name for name, _ in result.batch.failed] == ["img_big.jpg"]
    assert "more than the 1048576 bytes one request may carry" in result.batch.failed[0][1]
    assert storage.list_keys(f"transform/{result.job}/input/") == []  # read where it lies, nothing copied
    assert {content_type for _, content_type, _ in agent.requests} == {"image/jpeg"}
    assert sorted(key for key, _, _ in agent.requests) == [f"transform/kaggle-test/{name}" for name in GOOD]


@pytest.mark.parametrize("where", ["s3://other-bucket/transform/x", f"s3://{BUCKET}/raw/imgs/test"])
def test_images_outside_the_transform_prefix_are_refused_before_anything_starts(account, tmp_path, where):
    settings, storage = account
    runner, agent = _transform(settings, storage, tmp_path)
    with pytest.raises(TransformInputError, match="only place the SageMaker execution role reads images from"):
        runner.run("latest", where, tmp_path / "x.csv")
    assert agent.jobs == [] and not (tmp_path / "x.csv").exists()


def test_a_job_whose_container_dies_leaves_a_partial_submission_and_an_error(account, images, tmp_path):
    settings, storage = account
    runner, _ = _transform(settings, storage, tmp_path, die_after=2)
    result = runner.run("latest", images, tmp_path / "partial.csv")

    assert result.status == "Failed"
    assert result.error.startswith(f"transform job {result.job} failed (AlgorithmError: the container exited")
    assert "5 of 7 images have no output and no refusal from the model server; the 2 scored are in" in result.error
    assert list(_rows(tmp_path / "partial.csv")) == ["img_0.jpg", "img_1.jpg"]
    failed = dict(result.batch.failed)
    assert failed["img_4.jpg"].startswith("no output: job failed (AlgorithmError")
    assert failed["img_scan.jpg"].startswith("no output: job failed")  # the container died before refusing it


def test_when_every_image_is_refused_no_job_is_started(account, tmp_path):
    settings, storage = account
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (directory / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    runner, agent = _transform(settings, storage, tmp_path)
    result = runner.run("latest", directory, tmp_path / "none.csv")
    assert (result.job, agent.jobs, result.error) == (None, [], "")
    assert sorted(name for name, _ in result.batch.failed) == ["a.jpg", "b.png"]
    assert (tmp_path / "none.csv").read_text().strip() == ",".join(["img", *CLASSES])


# --- the job's life on the Stubber (moto ends every job at once and cannot stop one) ------------------------


def _stubbed(tmp_path, settings):
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    calls = []
    sagemaker.meta.events.register(
        "before-parameter-build.sagemaker.*", lambda params, model, **_: calls.append((model.name, dict(params)))
    )
    stubber = Stubber(sagemaker)
    name = f"{settings.endpoint_name}-{VERSION}"
    stubber.add_response(
        "describe_model",
        {
            "ModelName": name,
            "PrimaryContainer": {"Image": IMAGE},
            "ExecutionRoleArn": ROLE,
            "CreationTime": dt.datetime(2026, 1, 1),
            "ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{name}",
        },
        {"ModelName": name},
    )
    stubber.add_response(
        "create_transform_job", {"TransformJobArn": "arn:aws:sagemaker:us-east-1:123456789012:transform-job/x"}
    )
    return sagemaker, stubber, calls


def _described(status: str, **extra) -> dict:
    return {
        "TransformJobName": "x",
        "TransformJobArn": "arn:aws:sagemaker:us-east-1:123456789012:transform-job/x",
        "TransformJobStatus": status,
        "ModelName": "m",
        "CreationTime": dt.datetime(2026, 1, 1),
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": "s3://b/m"}}},
        "TransformResources": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 1},
        **extra,
    }


def test_ctrl_c_while_waiting_stops_the_job(account, images, tmp_path, monkeypatch):
    settings, storage = account
    sagemaker, stubber, calls = _stubbed(tmp_path, settings)
    stubber.add_response("describe_transform_job", _described("InProgress"), {"TransformJobName": ANY})
    stubber.add_response("stop_transform_job", {}, {"TransformJobName": ANY})

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    runner = BatchTransform(
        settings, storage=storage, sagemaker=sagemaker, options=TransformOptions(poll_seconds=30, progress=False)
    )
    with stubber, pytest.raises(KeyboardInterrupt):
        runner.run("latest", images, tmp_path / "out.csv")
    stubber.assert_no_pending_responses()
    created = next(params for operation, params in calls if operation == "CreateTransformJob")
    stopped = next(params for operation, params in calls if operation == "StopTransformJob")
    assert stopped == {"TransformJobName": created["TransformJobName"]}
    assert not (tmp_path / "out.csv").exists()


def test_a_job_stopped_elsewhere_ends_in_one_error_naming_it(account, images, tmp_path, monkeypatch):
    settings, storage = account
    sagemaker, stubber, _ = _stubbed(tmp_path, settings)
    for status in ("InProgress", "Stopping", "Stopped"):
        stubber.add_response("describe_transform_job", _described(status), {"TransformJobName": ANY})
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    runner = BatchTransform(
        settings, storage=storage, sagemaker=sagemaker, options=TransformOptions(poll_seconds=30, progress=False)
    )
    with stubber:
        result = runner.run("latest", images, tmp_path / "out.csv")
    stubber.assert_no_pending_responses()
    assert result.status == "Stopped"
    assert result.error.startswith(
        f"transform job {result.job} stopped (no reason given): 7 of 7 images have no output"
    )
    assert _rows(tmp_path / "out.csv") == {}
    assert dict(result.batch.failed)["img_0.jpg"] == "no output: job stopped (no reason given)"


# --- the task: options in, one line and the exit status out ----------------------------------------


def _tasks():
    spec = importlib.util.spec_from_file_location("dd_tasks_transform", REPO / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_task_runs_batch_transform_and_exits_1_on_a_partial_result(account, images, tmp_path, monkeypatch, capsys):
    settings, _ = account
    for name in ("bucket", "role_arn", "serving_image", "kms_key_id"):
        monkeypatch.setenv(f"DD_{name.upper()}", getattr(settings, name))
    monkeypatch.setenv("DD_ROOT", str(tmp_path))
    agent = TransformAgent(tmp_path, die_after=3)
    create_client = boto3.session.Session.client

    def client(self, service, *args, **kwargs):
        made = create_client(self, service, *args, **kwargs)
        if service == "sagemaker":
            agent.attach(made)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    tasks = _tasks()
    context = Context(Config(overrides={"run": {"in_stream": False}}))
    with pytest.raises(Exit) as refused:
        tasks.predict_batch(context, images=str(images), backend="aws", max_concurrent=65)
    assert (refused.value.code, refused.value.message) == (2, "MaxConcurrentTransforms must be 1..64, not 65")
    assert agent.jobs == []

    out = tmp_path / "task.csv"
    with pytest.raises(Exit) as failed:
        tasks.predict_batch(context, images=str(images), out=str(out), backend="aws", instances=2, max_concurrent=4)
    assert failed.value.code == 1 and "4 of 7 images have no output" in failed.value.message
    printed = capsys.readouterr().out
    assert f"transform job {agent.jobs[0]} (2 x ml.c5.xlarge) Failed: 3 images predicted, 6 unreadable" in printed
    assert "  skipped img_corrupt.jpg: image header is incomplete" in printed
    assert len(_rows(out)) == 3


def test_ctrl_c_while_uploading_stops_at_once(account, tmp_path):
    """An interrupted upload ends at once: Executor.map cancels the images not yet started."""
    settings, storage = account
    directory = tmp_path / "many"
    directory.mkdir()
    frame = camera_like_jpeg(seed=1)
    for i in range(60):
        (directory / f"img_{i:02d}.jpg").write_bytes(frame)
    sent = []

    def put_then_interrupt(key, data):  # an upload taking 50 ms, and Ctrl-C during the third
        sent.append(key)
        if len(sent) == 3:
            raise KeyboardInterrupt
        time.sleep(0.05)  # the upload's own duration

    storage.put_bytes = put_then_interrupt
    runner, agent = _transform(settings, storage, tmp_path, workers=2)
    with pytest.raises(KeyboardInterrupt):
        runner.run("latest", directory, tmp_path / "out.csv")
    assert len(sent) < 60 and agent.jobs == []  # a few more than 3 run meanwhile; the rest are cancelled
