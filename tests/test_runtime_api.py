"""The local runtime answers as SageMaker Runtime does, through boto3's own client.

One runtime for the module: endpoint ``distracted-driver`` (one variant, two
instances) and, later, ``ab-test`` (two weighted variants), all real
model-server processes on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
from collections import Counter

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from hostile_clients import json_error
from hosting_support import LoadLoop, hosted_env
from waiting import wait_until

from distracted_driver.hosting.base import ModelSpec, TrafficRouting
from distracted_driver.hosting.local.client import RuntimeClient
from distracted_driver.loadtest.hostile import malformed_requests, parse_answer, raw_exchange, slowloris
from distracted_driver.system import unix_socket_path

pytestmark = pytest.mark.slow
ALL_AT_ONCE = TrafficRouting(strategy="all-at-once", bake_seconds=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory, make_artifact):
    with hosted_env(tmp_path_factory.mktemp("runtime-api")) as hosted:
        artifact = make_artifact("api-v1", seed=1)
        result = hosted.hosting.deploy(
            ModelSpec("api-v1", hosted.publish(artifact), instance_count=2), ALL_AT_ONCE, smoke_images=hosted.smoke
        )
        assert result.outcome == "deployed", result
        yield hosted


def _invoke(client, env, body, **extra):
    return client.invoke_endpoint(
        EndpointName=env.settings.endpoint_name, Body=body, ContentType=extra.pop("ContentType", "image/jpeg"), **extra
    )


def test_boto3_invocations_are_spread_over_instances(env):
    client = env.client()
    for _ in range(12):
        answer = _invoke(client, env, env.smoke[0])
        probabilities = json.loads(answer["Body"].read())
        assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-3
        assert answer["InvokedProductionVariant"] == env.settings.variant_name
        assert answer["ContentType"].startswith("application/json")
        assert answer["ResponseMetadata"]["HTTPHeaders"]["x-model-version"] == "api-v1"
    instances = env.hosting.status().instances
    assert len(instances) == 2
    assert all(i["requests"] >= 3 for i in instances), instances  # least-outstanding with round-robin ties


def test_endpoint_url_from_the_environment_variable(env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", env.url())
    client = boto3.client(
        "sagemaker-runtime", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    answer = _invoke(client, env, env.smoke[1], Accept="application/json;verbose=true")
    verbose = json.loads(answer["Body"].read())
    assert verbose["class"] in [f"c{i}" for i in range(10)] and len(verbose["probabilities"]) == 10


def test_sagemaker_runtime_errors(env):
    client = env.client()
    with pytest.raises(client.exceptions.ValidationError, match="not found"):
        client.invoke_endpoint(EndpointName="no-such-endpoint", ContentType="image/jpeg", Body=env.smoke[0])

    with pytest.raises(client.exceptions.ModelError) as bad_image:
        _invoke(client, env, b"\xff\xd8\xff\xe0 this is not really a jpeg")
    error = bad_image.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 400
    assert json.loads(error["OriginalMessage"])["message"]
    assert "Received client error (400)" in error["Error"]["Message"]
    assert str(env.settings.state_dir) not in error["Error"]["Message"] and ".log" not in error["Error"]["Message"]

    with pytest.raises(client.exceptions.ModelError) as wrong_type:
        _invoke(client, env, b"hello", ContentType="text/plain")
    assert wrong_type.value.response["OriginalStatusCode"] == 415

    with pytest.raises(ClientError) as too_large:  # what the real service answers: a bare 413
        _invoke(client, env, b"\xff" * (6_291_456 + 1))
    assert too_large.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert too_large.value.response["Error"]["Code"] == "413"
    assert "6291456" in too_large.value.response["Error"]["Message"]

    with pytest.raises(client.exceptions.ValidationError, match="variant"):
        _invoke(client, env, env.smoke[0], TargetVariant="NoSuchVariant")

    assert _invoke(client, env, env.smoke[0])["ResponseMetadata"]["HTTPStatusCode"] == 200  # still serving


def test_control_is_on_a_private_unix_socket_only(env):
    """The TCP port serves invocations alone: no status (pids, paths), no shutdown, no model loading."""
    url = env.url()
    for method, path in (
        ("GET", "/_control/status"),
        ("GET", "/_control/health"),
        ("POST", "/_control/shutdown"),
        ("POST", "/_control/models"),
        ("DELETE", "/_control/endpoints/distracted-driver"),
        ("GET", "/status"),
        ("POST", "/shutdown"),
    ):
        response = requests.request(method, url + path, json={}, timeout=10)
        assert response.status_code in (404, 405), (method, path, response.status_code)
        body = response.json()
        assert body["__type"] == "UnknownOperationException" and body["message"], body
        assert str(env.settings.state_dir) not in response.text and "pid" not in body
    control = unix_socket_path(env.settings.state_dir / "hosting" / "control.sock")
    assert stat.S_ISSOCK(control.stat().st_mode) and stat.S_IMODE(control.stat().st_mode) == 0o600
    status = env.hosting.runtime().get("status")  # the owner's client reaches it
    assert status["endpoints"]["distracted-driver"]["status"] == "InService"


def test_every_refusal_on_the_invocation_port_is_a_sagemaker_error(env):
    url = env.url()
    for name, raw in malformed_requests("/endpoints/distracted-driver/invocations").items():
        answer = raw_exchange(url, raw)
        assert json_error(answer, 400)["__type"] == "ValidationError", name
        assert answer[1]["x-amzn-errortype"] == "ValidationError"
    assert json_error(raw_exchange(url, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 404)
    wrong_method = b"GET /endpoints/distracted-driver/invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert json_error(raw_exchange(url, wrong_method), 405)["__type"] == "UnknownOperationException"


def test_the_endpoint_health_check_shows_no_pid_and_no_path(env):
    response = requests.get(f"{env.url()}/endpoints/distracted-driver/health", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"endpoint": "distracted-driver", "status": "InService", "instances_in_service": 2}
    missing = requests.get(f"{env.url()}/endpoints/no-such-endpoint/health", timeout=10)
    assert missing.status_code == 400 and missing.json()["__type"] == "ValidationError"


def test_slow_headers_are_closed_while_invocations_go_on(env):
    client = env.client()

    def invoke() -> bool:
        answer = _invoke(client, env, env.smoke[0])
        return len(json.loads(answer["Body"].read())) == 10

    result = slowloris(env.url(), invoke, sockets=200, give_up_s=40)
    assert result.closed == 200 and result.longest_held_s < 20, result.closed_after_s
    assert json_error(parse_answer(result.answers[0]), 408)["__type"] == "RequestTimeout"
    assert result.normal_ok >= 5 and not result.normal_failed, result.normal_failed[:3]


def test_dead_instance_is_replaced_and_no_request_fails(env):
    before = {i["id"]: i for i in env.hosting.status().instances}
    victim = next(iter(before.values()))
    with LoadLoop(env, env.smoke, threads=2) as load:
        load.wait_for(20)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(
            lambda: [i for i in env.hosting.status().instances if i["state"] == "in-service" and i["id"] not in before],
            timeout_s=30,
            what="a replacement instance in service",
        )
        load.wait_for(len(load.outcomes) + 20)
    outcomes = load.stop()
    assert len(outcomes) >= 40
    assert all(o.ok for o in outcomes), Counter(o.error for o in outcomes if not o.ok)
    status = env.hosting.status()
    assert victim["id"] not in {i["id"] for i in status.instances}
    assert status.instance_count == 2


@pytest.fixture(scope="module")
def ab_endpoint(env, make_artifact, tmp_path_factory):
    """Endpoint ``ab-test``: variant A (weight 3) and B (weight 1), made through the control API."""
    runtime = env.hosting.runtime()
    models = tmp_path_factory.mktemp("ab-models")
    for version, seed in (("ab-a", 11), ("ab-b", 12)):
        directory = shutil.copytree(make_artifact(version, seed=seed).directory, models / version)
        runtime.post("models", {"name": version, "model_dir": str(directory)})
    runtime.post(
        "endpoint-configs",
        {
            "name": "ab-config",
            "variants": [
                {"variant_name": "A", "model_name": "ab-a", "weight": 3, "instance_threads": 1},
                {"variant_name": "B", "model_name": "ab-b", "weight": 1, "instance_threads": 1},
            ],
        },
    )
    record = runtime.post(
        "endpoints/ab-test/deployments",
        {"config": "ab-config", "smoke_images": [base64.b64encode(i).decode() for i in env.smoke]},
    )
    record = wait_until(lambda: _finished(runtime, record["id"]), timeout_s=60, what="ab-test in service")
    assert record["outcome"] == "deployed", record
    return models


def _finished(runtime: RuntimeClient, deployment_id: str):
    record = runtime.get(f"endpoints/ab-test/deployments/{deployment_id}")
    return record if record["outcome"] else None


def test_variants_by_weight_and_by_target(env, ab_endpoint):
    client = env.client()
    seen = Counter()
    for _ in range(40):
        answer = client.invoke_endpoint(EndpointName="ab-test", ContentType="image/jpeg", Body=env.smoke[0])
        variant = answer["InvokedProductionVariant"]
        version = answer["ResponseMetadata"]["HTTPHeaders"]["x-model-version"]
        assert version == {"A": "ab-a", "B": "ab-b"}[variant]
        seen[variant] += 1
    assert seen["A"] > seen["B"] > 0, seen
    for _ in range(5):
        answer = client.invoke_endpoint(
            EndpointName="ab-test", ContentType="image/jpeg", Body=env.smoke[0], TargetVariant="B"
        )
        assert answer["InvokedProductionVariant"] == "B"


def test_no_instance_in_service_is_service_unavailable(env, ab_endpoint):
    """B's model disappears and its instance dies: B cannot be replaced, so targeting B gets a 503."""
    runtime = env.hosting.runtime()
    (ab_endpoint / "ab-b").rename(ab_endpoint / "ab-b-gone")
    b_fleet = next(v for v in runtime.get("status")["endpoints"]["ab-test"]["variants"] if v["name"] == "B")
    os.kill(b_fleet["fleets"][0]["instances"][0]["pid"], signal.SIGKILL)
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=env.url(),
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    with pytest.raises(client.exceptions.ServiceUnavailable):
        client.invoke_endpoint(EndpointName="ab-test", ContentType="image/jpeg", Body=env.smoke[0], TargetVariant="B")
    answer = client.invoke_endpoint(EndpointName="ab-test", ContentType="image/jpeg", Body=env.smoke[0])
    assert answer["InvokedProductionVariant"] == "A"  # without a target, the variant in service answers
