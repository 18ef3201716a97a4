"""SageMakerHosting: moto for create/describe/delete, autoscaling and the runtime; botocore's Stubber
(which validates every request against the service model) for update_endpoint, which moto lacks.

The last test runs the same behaviour on the local runtime and on (mocked) SageMaker.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import boto3
import pytest
from botocore.stub import ANY, Stubber
from botocore.validate import ParamValidator
from hosting_support import put_rollback_alarms

from distracted_driver.config import Settings
from distracted_driver.hosting import EndpointStatus, HostingError, open_hosting
from distracted_driver.hosting.aws import (
    SageMakerHosting,
    deployment_config,
    rollback_alarm_names,
    scalable_resource_id,
    scaling_policy_name,
    version_resource_name,
)
from distracted_driver.hosting.base import AlarmThresholds, ModelSpec, ScalingPolicy, TrafficRouting
from distracted_driver.model.registry import Registry
from distracted_driver.storage.s3 import S3Storage

pytestmark = pytest.mark.moto  # moto's SageMaker, S3 and Application Auto Scaling for every test (about 50 s)

BUCKET = "dd-hosting-bucket"
ROLE = "arn:aws:iam::123456789012:role/dd-dev-sagemaker"
REPOSITORY, TAG = "dd-dev-serving", "0123abcd"
IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPOSITORY}:{TAG}"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 7,
            "digest": "sha256:" + "a" * 64,
        },
        "layers": [],
    }
)
V1, V2, V0 = "dd-20260101-000000-aaaa", "dd-20260102-000000-bbbb", "dd-20251231-000000-cccc"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _settings(tmp_path) -> Settings:
    return Settings(backend="aws", root=tmp_path, bucket=BUCKET, role_arn=ROLE, serving_image=IMAGE)


@pytest.fixture
def env(aws, tmp_path, make_artifact, runtime_answers):
    """A bucket with two registered model versions, the rollback alarms Terraform creates, the pushed
    serving image, the hosting; the endpoint answers the smoke images with probabilities."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    _push_image()
    settings = _settings(tmp_path)
    storage = S3Storage(BUCKET)
    for version, seed in ((V1, 1), (V2, 2)):
        make_artifact(version, seed=seed).publish(storage, settings)
    put_rollback_alarms(settings.endpoint_name)
    hosting = SageMakerHosting(settings, storage=storage, poll_seconds=0, progress=False, keep=2)
    return settings, storage, hosting


def _push_image() -> None:
    ecr = boto3.client("ecr", region_name="us-east-1")
    ecr.create_repository(repositoryName=REPOSITORY, imageTagMutability="IMMUTABLE")
    ecr.put_image(repositoryName=REPOSITORY, imageManifest=MANIFEST, imageTag=TAG)


def _tags() -> set[str]:
    images = boto3.client("ecr", region_name="us-east-1").describe_images(repositoryName=REPOSITORY)["imageDetails"]
    return {tag for image in images for tag in image.get("imageTags", [])}


def _spec(settings, version) -> ModelSpec:
    return ModelSpec(version, f"{settings.models_prefix}/{version}/output/model.tar.gz")


# --- requests, checked against botocore's service model ------------------------------------


def _valid(operation: str, params: dict) -> None:
    model = boto3.client("sagemaker", region_name="us-east-1").meta.service_model
    report = ParamValidator().validate(params, model.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


@pytest.mark.parametrize(
    "routing, expected",
    [
        (TrafficRouting(strategy="all-at-once", bake_seconds=45), {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 45}),
        (
            TrafficRouting(strategy="canary", canary_percent=10, wait_seconds=120),
            {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}, "WaitIntervalInSeconds": 120},
        ),
        (
            TrafficRouting(strategy="linear", linear_step_percent=25, wait_seconds=60),
            {
                "Type": "LINEAR",
                "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25},
                "WaitIntervalInSeconds": 60,
            },
        ),
    ],
)
def test_deployment_config_per_strategy(routing, expected):
    config = deployment_config(routing, ["a-errors", "a-latency"])
    policy = config["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == expected
    assert policy["MaximumExecutionTimeoutInSeconds"] == 1800
    assert config["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": "a-errors"}, {"AlarmName": "a-latency"}]}
    _valid(
        "UpdateEndpoint",
        {
            "EndpointName": "e",
            "EndpointConfigName": "c",
            "RetainAllVariantProperties": True,
            "DeploymentConfig": config,
        },
    )


def test_deployment_config_keeps_to_the_service_limits():
    config = deployment_config(TrafficRouting(strategy="all-at-once", bake_seconds=9000, max_execution_seconds=60), [])
    policy = config["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"] == 3600
    assert policy["MaximumExecutionTimeoutInSeconds"] == 600
    assert "AutoRollbackConfiguration" not in config  # an empty alarm list is invalid
    with pytest.raises(HostingError, match="at most 50%"):
        deployment_config(TrafficRouting(strategy="canary", canary_percent=60), [])
    with pytest.raises(HostingError, match="10..50%"):
        deployment_config(TrafficRouting(strategy="linear", linear_step_percent=5), [])


def test_names_fit_sagemaker():
    assert version_resource_name("distracted-driver", V1) == f"distracted-driver-{V1}"
    with pytest.raises(HostingError, match="shorten"):
        version_resource_name("x" * 40, V1)


# --- create, no-op, status, invoke, delete on moto -------------------------------------------


def test_first_deploy_creates_the_endpoint_and_registers_autoscaling(env):
    settings, storage, hosting = env
    result = hosting.deploy(_spec(settings, V1), TrafficRouting(), AlarmThresholds())
    assert (result.outcome, result.live_version) == ("deployed", V1)
    assert "create" in result.timings

    sm = boto3.client("sagemaker", region_name="us-east-1")
    name = f"{settings.endpoint_name}-{V1}"
    endpoint = sm.describe_endpoint(EndpointName=settings.endpoint_name)
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", name)
    container = sm.describe_model(ModelName=name)["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["ModelDataUrl"] == f"s3://{BUCKET}/models/{V1}/output/model.tar.gz"
    variant = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]
    assert (variant["VariantName"], variant["ModelName"], variant["InstanceType"]) == (
        "AllTraffic",
        name,
        "ml.c5.large",
    )

    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert target["ResourceId"] == scalable_resource_id(settings.endpoint_name, "AllTraffic")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (
        ScalingPolicy().min_instances,
        ScalingPolicy().max_instances,
    )
    policy = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    assert policy["PolicyName"] == scaling_policy_name(settings.endpoint_name, "AllTraffic")
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    assert Registry(storage, settings).live()["job"] == V1
    status = hosting.status()
    assert (status.status, status.live_version, status.instance_count) == ("InService", V1, 1)
    assert status.autoscaling["AllTraffic"]["target_invocations_per_instance"] == 600.0
    assert status.runtime_url == "https://runtime.sagemaker.us-east-1.amazonaws.com"

    again = hosting.deploy(_spec(settings, V1), TrafficRouting(), AlarmThresholds())
    assert (again.outcome, again.live_version) == ("unchanged", V1)
    assert len(sm.list_endpoint_configs()["EndpointConfigs"]) == 1

    body, variant_name = hosting.invoke(b"image bytes", "image/jpeg")  # moto decodes bodies as text
    assert isinstance(body, bytes) and variant_name


def test_a_builtin_algorithm_model_is_served_by_its_own_image(env):
    settings, storage, hosting = env
    from sagemaker.core import image_uris

    storage.put_bytes(f"models/{V0}/status.json", json.dumps({"job": V0, "algorithm": "builtin"}).encode())
    storage.put_bytes(f"models/{V0}/output/model.tar.gz", b"mxnet symbol and params")
    result = hosting.deploy(_spec(settings, V0))
    assert result.outcome == "deployed"
    image = boto3.client("sagemaker", region_name="us-east-1").describe_model(
        ModelName=f"{settings.endpoint_name}-{V0}"
    )["PrimaryContainer"]["Image"]
    assert image == image_uris.retrieve("image-classification", "us-east-1")
    assert Registry(storage, settings).live() is None  # not in the registry: nothing to gate it by


def test_deploy_without_an_image_or_role_says_what_to_set(env, tmp_path):
    settings, storage, _ = env
    bare = SageMakerHosting(
        Settings(backend="aws", root=tmp_path, bucket=BUCKET, role_arn=ROLE),
        storage=storage,
        poll_seconds=0,
        progress=False,
    )
    with pytest.raises(HostingError, match="DD_SERVING_IMAGE"):
        bare.deploy(_spec(settings, V1))


def test_delete_leaves_nothing(env):
    settings, _, hosting = env
    hosting.deploy(_spec(settings, V1))
    hosting.delete()
    sm = boto3.client("sagemaker", region_name="us-east-1")
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == [] and sm.list_models()["Models"] == []
    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert hosting.status().status == "absent"


def test_open_hosting_picks_sagemaker(tmp_path):
    assert isinstance(open_hosting(_settings(tmp_path)), SageMakerHosting)


# --- blue/green updates through the Stubber --------------------------------------------------


def _endpoint(settings, config, status="InService", modified=T0, failure=None, pending=None, instances=2) -> dict:
    answer = {
        "EndpointName": settings.endpoint_name,
        "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{settings.endpoint_name}",
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": T0,
        "LastModifiedTime": modified,
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "CurrentWeight": 1.0,
                "DesiredWeight": 1.0,
                "CurrentInstanceCount": instances,
                "DesiredInstanceCount": instances,
            }
        ],
    }
    if failure:
        answer["FailureReason"] = failure
    if pending:
        answer["PendingDeploymentSummary"] = pending
    return answer


def _not_found(stub: Stubber, operation: str, params: dict) -> None:
    stub.add_client_error(
        operation,
        service_error_code="ValidationException",
        http_status_code=400,
        service_message=f"Could not find {operation[8:]}",
        expected_params=params,
    )


def _config(name: str, instance_type: str, capture: dict | None = None) -> dict:
    model = name.split("--")[0]  # a config's model has the config's name without its capture part
    config = {
        "EndpointConfigName": name,
        "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{name}",
        "CreationTime": T0,
        "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": 1, "InstanceType": instance_type}
        ],
    }
    if capture:
        config["DataCaptureConfig"] = capture
    return config


def _stub_instance_types(stub: Stubber, *configs: tuple[str, str], capture: dict | None = None) -> None:
    for name, instance_type in configs:
        stub.add_response(
            "describe_endpoint_config", _config(name, instance_type, capture), {"EndpointConfigName": name}
        )


def _stub_update_start(
    stub: Stubber,
    settings,
    routing: TrafficRouting,
    blue: str,
    green: str,
    version: str,
    instances: int = 2,
    routing_config: dict | None = None,
    blue_type: str = "ml.c5.large",
    capture: dict | None = None,
):
    green_model = green.split("--")[0]
    stub.add_response(
        "describe_endpoint", _endpoint(settings, blue, instances=instances), {"EndpointName": settings.endpoint_name}
    )
    _stub_instance_types(stub, (blue, blue_type), capture=capture)  # its DataCaptureConfig is copied into green's
    _not_found(stub, "describe_model", {"ModelName": green_model})
    stub.add_response(
        "create_model",
        {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{green_model}"},
        {
            "ModelName": green_model,
            "PrimaryContainer": {
                "Image": IMAGE,
                "ModelDataUrl": f"s3://{BUCKET}/models/{version}/output/model.tar.gz",
                "Environment": {"MODEL_VERSION": version},
            },
            "ExecutionRoleArn": ROLE,
            "Tags": ANY,
        },
    )
    _not_found(stub, "describe_endpoint_config", {"EndpointConfigName": green})
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{green}"},
        {
            "EndpointConfigName": green,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": green_model,
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.c5.large",
                    "InitialVariantWeight": 1.0,
                }
            ],
            **({"DataCaptureConfig": capture} if capture else {}),
            "Tags": ANY,
        },
    )
    _stub_instance_types(stub, (blue, blue_type), (green, "ml.c5.large"))
    # The full update request: blue/green canary with the Terraform alarms, instance counts retained.
    stub.add_response(
        "update_endpoint",
        {"EndpointArn": f"arn:aws:sagemaker:us-east-1:1:endpoint/{settings.endpoint_name}"},
        {
            "EndpointName": settings.endpoint_name,
            "EndpointConfigName": green,
            "RetainAllVariantProperties": True,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": routing_config
                    or {
                        "Type": "CANARY",
                        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20},
                        "WaitIntervalInSeconds": 300,
                    },
                    "TerminationWaitInSeconds": 120,
                    "MaximumExecutionTimeoutInSeconds": 3600,
                },
                "AutoRollbackConfiguration": {
                    "Alarms": [{"AlarmName": name} for name in rollback_alarm_names(settings.endpoint_name)]
                },
            },
        },
    )
    pending = {
        "EndpointConfigName": green,
        "ProductionVariants": [
            {"VariantName": "AllTraffic", "CurrentWeight": 0.2, "DesiredWeight": 1.0, "CurrentInstanceCount": 1}
        ],
    }
    stub.add_response(
        "describe_endpoint", _endpoint(settings, blue, "Updating", T0 + dt.timedelta(seconds=5), pending=pending)
    )


CANARY = TrafficRouting(
    strategy="canary", canary_percent=20, wait_seconds=300, termination_wait_seconds=120, max_execution_seconds=3600
)


def test_update_is_a_blue_green_canary_with_auto_rollback(env):
    settings, storage, _ = env
    client = boto3.client("sagemaker", region_name="us-east-1")
    blue, green = version_resource_name(settings.endpoint_name, V1), version_resource_name(settings.endpoint_name, V2)
    old = version_resource_name(settings.endpoint_name, V0)
    hosting = SageMakerHosting(settings, sagemaker=client, storage=storage, poll_seconds=0, progress=False, keep=2)
    with Stubber(client) as stub:
        _stub_update_start(stub, settings, CANARY, blue, green, V2)
        stub.add_response("describe_endpoint", _endpoint(settings, green, "InService", T0 + dt.timedelta(seconds=900)))
        # Cleanup keeps the newest two configs (green and blue) and their models.
        configs = [
            {
                "EndpointConfigName": n,
                "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{n}",
                "CreationTime": T0,
            }
            for n in (green, blue, old)
        ]
        stub.add_response(
            "list_endpoint_configs",
            {"EndpointConfigs": configs},
            {"NameContains": f"{settings.endpoint_name}-", "SortBy": "CreationTime", "SortOrder": "Descending"},
        )
        stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": old})
        models = [
            {"ModelName": n, "ModelArn": f"arn:aws:sagemaker:us-east-1:1:model/{n}", "CreationTime": T0}
            for n in (green, blue, old)
        ]
        stub.add_response("list_models", {"Models": models}, {"NameContains": f"{settings.endpoint_name}-"})
        stub.add_response(
            "describe_model",
            {
                "ModelName": old,
                "ModelArn": f"arn:aws:sagemaker:us-east-1:1:model/{old}",
                "CreationTime": T0,
                "PrimaryContainer": {"Image": IMAGE},
            },
            {"ModelName": old},
        )  # its image loses the model-<version> tag that kept it
        stub.add_response("delete_model", {}, {"ModelName": old})
        result = hosting.deploy(_spec(settings, V2), CANARY, AlarmThresholds())
        stub.assert_no_pending_responses()
    assert (result.outcome, result.live_version) == ("deployed", V2)
    assert result.reason == f"replaced {V1}" and "swap" in result.timings
    assert Registry(storage, settings).live()["job"] == V2


def test_an_alarm_during_the_canary_rolls_back_and_keeps_the_live_record(env):
    settings, storage, _ = env
    Registry(storage, settings).set_live(V1)
    client = boto3.client("sagemaker", region_name="us-east-1")
    blue, green = version_resource_name(settings.endpoint_name, V1), version_resource_name(settings.endpoint_name, V2)
    hosting = SageMakerHosting(settings, sagemaker=client, storage=storage, poll_seconds=0, progress=False)
    with Stubber(client) as stub:
        _stub_update_start(stub, settings, CANARY, blue, green, V2)
        stub.add_response("describe_endpoint", _endpoint(settings, blue, "RollingBack", T0 + dt.timedelta(seconds=400)))
        reason = f"Alarm {rollback_alarm_names(settings.endpoint_name)[0]} went into ALARM during the canary"
        stub.add_response(
            "describe_endpoint", _endpoint(settings, blue, "InService", T0 + dt.timedelta(seconds=500), reason)
        )
        result = hosting.deploy(_spec(settings, V2), CANARY, AlarmThresholds())
        stub.assert_no_pending_responses()  # and no cleanup calls: the Stubber refuses unexpected ones
    assert (result.outcome, result.live_version, result.reason) == ("rolled-back", V1, reason)
    assert Registry(storage, settings).live()["job"] == V1


def test_rollback_swaps_back_to_the_previous_config(env):
    settings, storage, _ = env
    client = boto3.client("sagemaker", region_name="us-east-1")
    current, previous = (
        version_resource_name(settings.endpoint_name, V2),
        version_resource_name(settings.endpoint_name, V1),
    )
    hosting = SageMakerHosting(settings, sagemaker=client, storage=storage, poll_seconds=0, progress=False)
    with Stubber(client) as stub:
        stub.add_response("describe_endpoint", _endpoint(settings, current), {"EndpointName": settings.endpoint_name})
        configs = [
            {
                "EndpointConfigName": n,
                "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{n}",
                "CreationTime": T0,
            }
            for n in (current, previous)
        ]
        stub.add_response(
            "list_endpoint_configs",
            {"EndpointConfigs": configs},
            {"NameContains": f"{settings.endpoint_name}-", "SortBy": "CreationTime", "SortOrder": "Descending"},
        )
        _stub_instance_types(stub, (current, "ml.c5.large"))  # the live capture (none), kept by the rollback
        _stub_instance_types(stub, (current, "ml.c5.large"), (previous, "ml.c5.large"))
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/x"},
            {
                "EndpointName": settings.endpoint_name,
                "EndpointConfigName": previous,
                "RetainAllVariantProperties": True,
                "DeploymentConfig": {
                    "BlueGreenUpdatePolicy": {
                        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                        "TerminationWaitInSeconds": 0,
                        "MaximumExecutionTimeoutInSeconds": 1800,
                    }
                },
            },
        )
        stub.add_response(
            "describe_endpoint", _endpoint(settings, previous, "InService", T0 + dt.timedelta(seconds=60))
        )
        result = hosting.rollback()
        stub.assert_no_pending_responses()
    assert (result.outcome, result.live_version) == ("deployed", V1)
    assert Registry(storage, settings).live()["job"] == V1


# --- one behaviour, two backends --------------------------------------------------------------


@pytest.fixture(params=["local", pytest.param("aws")])
def any_hosting(request, tmp_path):
    """(hosting, storage, settings) of either backend."""
    if request.param == "local":
        from hosting_support import hosted_env

        with hosted_env(tmp_path) as hosted:
            yield hosted.hosting, hosted.storage, hosted.settings
        return
    request.getfixturevalue("runtime_answers")
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    _push_image()
    settings, storage = _settings(tmp_path), S3Storage(BUCKET)
    yield SageMakerHosting(settings, storage=storage, poll_seconds=0, progress=False), storage, settings


@pytest.mark.slow
def test_both_backends_create_noop_scale_and_delete_alike(any_hosting, make_artifact):
    hosting, storage, settings = any_hosting
    spec = ModelSpec("both-v1", make_artifact("both-v1", seed=4).publish(storage, settings))
    routing = TrafficRouting(strategy="all-at-once", bake_seconds=0)

    created = hosting.deploy(spec, routing, AlarmThresholds())
    assert (created.outcome, created.live_version) == ("deployed", "both-v1")
    status = hosting.status()
    assert (status.status, status.live_version, status.instance_count) == ("InService", "both-v1", 1)
    assert Registry(storage, settings).live()["job"] == "both-v1"

    assert hosting.deploy(spec, routing, AlarmThresholds()).outcome == "unchanged"

    hosting.set_autoscaling(ScalingPolicy(min_instances=1, max_instances=3, target_invocations_per_instance=300))
    scaling = hosting.status().autoscaling[settings.variant_name]
    assert (scaling["max_instances"], scaling["target_invocations_per_instance"]) == (3, 300)

    hosting.delete()
    assert hosting.status().status == "absent"


# --- first contact with a real account (issue 11) ----------------------------------------------


def test_kept_models_keep_their_image_from_the_ecr_lifecycle(env):
    """Each kept model's image carries model-<version> (ECR's lifecycle rule 1 never expires those);
    deleting the model takes the tag off again."""
    settings, _, hosting = env
    hosting.deploy(_spec(settings, V1))
    assert _tags() == {TAG, f"model-{V1}"}
    hosting.delete()
    assert _tags() == {TAG}


def test_a_missing_image_is_refused_before_any_model_is_made(env, tmp_path):
    settings, storage, _ = env
    moved = Settings(backend="aws", root=tmp_path, bucket=BUCKET, role_arn=ROLE, serving_image=IMAGE[:-8] + "feedbeef")
    hosting = SageMakerHosting(moved, storage=storage, poll_seconds=0, progress=False)
    with pytest.raises(HostingError, match="infra.push-image"):
        hosting.deploy(_spec(settings, V1))
    assert boto3.client("sagemaker", region_name="us-east-1").list_models()["Models"] == []


def test_a_refused_autoscaling_registration_leaves_registry_and_endpoint_agreeing(env):
    """Application Auto Scaling validates the caller's SageMaker permissions when it registers the
    variant; when it refuses, the endpoint already serves V1, and the registry must say so."""
    settings, storage, _ = env
    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    hosting = SageMakerHosting(settings, storage=storage, autoscaling=scaling, poll_seconds=0, progress=False)
    with Stubber(scaling) as stub:
        stub.add_client_error(
            "register_scalable_target",
            service_error_code="ValidationException",
            http_status_code=400,
            service_message="The caller is not authorized to perform sagemaker:UpdateEndpointWeightsAndCapacities",
        )
        with pytest.raises(
            HostingError, match="recorded as live.*UpdateEndpointWeightsAndCapacities.*deploy.autoscale"
        ):
            hosting.deploy(_spec(settings, V1))
    served = boto3.client("sagemaker", region_name="us-east-1").describe_endpoint(EndpointName=settings.endpoint_name)
    assert served["EndpointConfigName"] == version_resource_name(settings.endpoint_name, V1)
    assert Registry(storage, settings).live()["job"] == V1


def test_a_canary_on_one_instance_goes_all_at_once_and_says_so(env):
    """CanarySize is at most 50% of the fleet: a one-instance variant cannot take a canary."""
    settings, storage, _ = env
    client = boto3.client("sagemaker", region_name="us-east-1")
    blue, green = version_resource_name(settings.endpoint_name, V1), version_resource_name(settings.endpoint_name, V2)
    hosting = SageMakerHosting(settings, sagemaker=client, storage=storage, poll_seconds=0, progress=False, keep=5)
    with Stubber(client) as stub:
        _stub_update_start(
            stub,
            settings,
            CANARY,
            blue,
            green,
            V2,
            instances=1,
            routing_config={"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 300},
        )
        result = _swap_completes(stub, hosting, settings, green)
    assert result.outcome == "deployed"
    assert "canary needs at least 2 instances" in result.reason and "all at once" in result.reason


def _swap_completes(stub: Stubber, hosting, settings, green: str):
    """The rest of a swap to V2 that SageMaker finishes: in service on green, nothing to clean up."""
    stub.add_response("describe_endpoint", _endpoint(settings, green, "InService", T0 + dt.timedelta(seconds=900)))
    stub.add_response("list_endpoint_configs", {"EndpointConfigs": []})
    stub.add_response("list_models", {"Models": []})
    result = hosting.deploy(_spec(settings, V2), CANARY, AlarmThresholds())
    stub.assert_no_pending_responses()
    return result


@pytest.mark.parametrize("strategy", ["canary", "linear"])
def test_routing_for_a_small_fleet(strategy):
    from distracted_driver.hosting.aws import routing_for_fleet

    routing = TrafficRouting(strategy=strategy, wait_seconds=120)
    assert routing_for_fleet(routing, 2) == (routing, "")
    fallback, note = routing_for_fleet(routing, 1)
    assert fallback.strategy == "all-at-once" and fallback.bake_seconds == 120 and strategy in note


def test_an_instance_type_change_takes_the_scaling_registration_off_for_the_swap(env):
    """Updating an autoscaled variant to another instance type fails while it is registered."""
    settings, storage, _ = env
    client = boto3.client("sagemaker", region_name="us-east-1")
    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    blue, green = version_resource_name(settings.endpoint_name, V1), version_resource_name(settings.endpoint_name, V2)
    hosting = SageMakerHosting(
        settings, sagemaker=client, autoscaling=scaling, storage=storage, poll_seconds=0, progress=False, keep=5
    )
    policy = ScalingPolicy(min_instances=2, max_instances=6, target_invocations_per_instance=300)
    hosting.set_autoscaling(policy)
    order = []
    for service in (client, scaling):
        service.meta.events.register("before-parameter-build", lambda model, **kw: order.append(model.name))

    with Stubber(client) as stub:
        _stub_update_start(stub, settings, CANARY, blue, green, V2, blue_type="ml.m5.large")
        result = _swap_completes(stub, hosting, settings, green)
    assert result.outcome == "deployed"
    assert (
        order.index("DeregisterScalableTarget") < order.index("UpdateEndpoint") < order.index("RegisterScalableTarget")
    )
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    tracking = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0][
        "TargetTrackingScalingPolicyConfiguration"
    ]
    assert tracking["TargetValue"] == 300


# --- data capture: DataCaptureConfig on each endpoint config --------------------------------------

KEY = "arn:aws:kms:us-east-1:123456789012:key/0c0ffee0-0000-4000-8000-000000000000"


def _capture(percent: int) -> dict:
    """The DataCaptureConfig the deploy asks for (API_DataCaptureConfig.html, API_CaptureContentTypeHeader.html)."""
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": percent,
        "DestinationS3Uri": f"s3://{BUCKET}/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "KmsKeyId": KEY,
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }


def _capturing(tmp_path, **extra) -> Settings:
    return Settings(
        backend="aws", root=tmp_path, bucket=BUCKET, role_arn=ROLE, serving_image=IMAGE, kms_key_id=KEY, **extra
    )


def test_a_capture_percent_puts_a_data_capture_config_on_the_endpoint_config(env, tmp_path):
    _, storage, _ = env
    settings = _capturing(tmp_path)
    hosting = SageMakerHosting(settings, storage=storage, poll_seconds=0, progress=False)
    result = hosting.deploy(_spec(settings, V1), capture_percent=25)
    assert (result.outcome, result.live_version) == ("deployed", V1)
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    name = sagemaker.describe_endpoint(EndpointName=settings.endpoint_name)["EndpointConfigName"]
    assert name == version_resource_name(settings.endpoint_name, V1, _capture(25))
    assert re.fullmatch(rf"{settings.endpoint_name}-{V1}--cap25-[0-9a-f]{{6}}", name) and len(name) <= 63
    described = sagemaker.describe_endpoint_config(EndpointConfigName=name)
    assert described["DataCaptureConfig"] == _capture(25)
    assert described["ProductionVariants"][0]["ModelName"] == version_resource_name(settings.endpoint_name, V1)
    _valid(
        "CreateEndpointConfig",
        {
            "EndpointConfigName": name,
            "DataCaptureConfig": _capture(25),
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m"}],
        },
    )
    status = hosting.status()
    assert status.live_version == V1 and status.data_capture["DestinationS3Uri"] == f"s3://{BUCKET}/capture"
    assert Registry(storage, settings).live()["job"] == V1
    # Deploying the live model again copies its capture: the same config, nothing to do.
    assert hosting.deploy(_spec(settings, V1)).outcome == "unchanged"
    # DD_CAPTURE_PERCENT is the default of the flag.
    from_env = SageMakerHosting(
        _capturing(tmp_path, capture_percent="25"), storage=storage, poll_seconds=0, progress=False
    )
    assert from_env.deploy(_spec(settings, V1)).outcome == "unchanged"


def test_a_swap_copies_the_live_capture_into_the_new_config(env, tmp_path):
    _, storage, _ = env
    settings = _capturing(tmp_path)
    client = boto3.client("sagemaker", region_name="us-east-1")
    capture = _capture(40)
    blue, green = (version_resource_name(settings.endpoint_name, v, capture) for v in (V1, V2))
    old = version_resource_name(settings.endpoint_name, V0)
    hosting = SageMakerHosting(settings, sagemaker=client, storage=storage, poll_seconds=0, progress=False, keep=2)
    with Stubber(client) as stub:
        _stub_update_start(stub, settings, CANARY, blue, green, V2, capture=capture)
        stub.add_response("describe_endpoint", _endpoint(settings, green, "InService", T0 + dt.timedelta(seconds=900)))
        # Cleanup keeps the newest two versions' configs and their models (named without the capture part).
        configs = [
            {
                "EndpointConfigName": n,
                "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{n}",
                "CreationTime": T0,
            }
            for n in (green, blue, old)
        ]
        stub.add_response("list_endpoint_configs", {"EndpointConfigs": configs})
        stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": old})
        models = [
            {"ModelName": n.split("--")[0], "ModelArn": f"arn:aws:sagemaker:us-east-1:1:model/{n}", "CreationTime": T0}
            for n in (green, blue, old)
        ]
        stub.add_response("list_models", {"Models": models})
        stub.add_response(
            "describe_model",
            {
                "ModelName": old,
                "ModelArn": f"arn:aws:sagemaker:us-east-1:1:model/{old}",
                "CreationTime": T0,
                "PrimaryContainer": {"Image": IMAGE},
            },
            {"ModelName": old},
        )
        stub.add_response("delete_model", {}, {"ModelName": old})
        result = hosting.deploy(_spec(settings, V2), CANARY, AlarmThresholds())
        stub.assert_no_pending_responses()
    assert (result.outcome, result.live_version, result.reason) == ("deployed", V2, f"replaced {V1}")


def test_deploy_capture_makes_a_config_of_the_live_model_and_updates_to_it(env, tmp_path):
    _, storage, _ = env
    settings = _capturing(tmp_path)
    client = boto3.client("sagemaker", region_name="us-east-1")
    blue = version_resource_name(settings.endpoint_name, V1)
    new = version_resource_name(settings.endpoint_name, V1, _capture(10))
    hosting = SageMakerHosting(settings, sagemaker=client, storage=storage, poll_seconds=0, progress=False)
    with Stubber(client) as stub:
        stub.add_response("describe_endpoint", _endpoint(settings, blue), {"EndpointName": settings.endpoint_name})
        _stub_instance_types(stub, (blue, "ml.m5.large"))  # its variants are copied
        _not_found(stub, "describe_endpoint_config", {"EndpointConfigName": new})
        stub.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{new}"},
            {
                "EndpointConfigName": new,
                "DataCaptureConfig": _capture(10),
                "Tags": ANY,
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": blue,
                        "InitialInstanceCount": 1,
                        "InstanceType": "ml.m5.large",
                    }
                ],
            },
        )
        _stub_instance_types(stub, (blue, "ml.m5.large"), (new, "ml.m5.large"))
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/x"},
            {
                "EndpointName": settings.endpoint_name,
                "EndpointConfigName": new,
                "RetainAllVariantProperties": True,
                "DeploymentConfig": {
                    "BlueGreenUpdatePolicy": {
                        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                        "TerminationWaitInSeconds": 0,
                        "MaximumExecutionTimeoutInSeconds": 1800,
                    }
                },
            },
        )
        stub.add_response("describe_endpoint", _endpoint(settings, new, "InService", T0 + dt.timedelta(seconds=60)))
        stub.add_response("list_endpoint_configs", {"EndpointConfigs": []})
        stub.add_response("list_models", {"Models": []})
        summary = {
            "EnableCapture": True,
            "CaptureStatus": "Started",
            "CurrentSamplingPercentage": 10,
            "DestinationS3Uri": f"s3://{BUCKET}/capture",
            "KmsKeyId": KEY,
        }
        stub.add_response("describe_endpoint", {**_endpoint(settings, new), "DataCaptureConfig": summary})
        capture = hosting.set_capture(10)
        stub.assert_no_pending_responses()
    assert capture == summary
    from distracted_driver.hosting.report import capture_text

    assert capture_text(capture) == f"10% of invocations -> s3://{BUCKET}/capture, Started"


def test_a_rollback_keeps_the_live_capture(env, tmp_path):
    _, storage, _ = env
    settings = _capturing(tmp_path)
    client = boto3.client("sagemaker", region_name="us-east-1")
    capture = _capture(60)
    current, previous = (
        version_resource_name(settings.endpoint_name, V2, capture),
        version_resource_name(settings.endpoint_name, V1),
    )
    target = version_resource_name(settings.endpoint_name, V1, capture)
    hosting = SageMakerHosting(settings, sagemaker=client, storage=storage, poll_seconds=0, progress=False)
    with Stubber(client) as stub:
        stub.add_response("describe_endpoint", _endpoint(settings, current), {"EndpointName": settings.endpoint_name})
        configs = [
            {
                "EndpointConfigName": n,
                "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{n}",
                "CreationTime": T0,
            }
            for n in (current, version_resource_name(settings.endpoint_name, V2), previous)
        ]
        stub.add_response("list_endpoint_configs", {"EndpointConfigs": configs})
        _stub_instance_types(stub, (current, "ml.c5.large"), capture=capture)  # the live capture
        _stub_instance_types(stub, (previous, "ml.c5.large"))  # V1's variants (V2's other config is not a rollback)
        _not_found(stub, "describe_endpoint_config", {"EndpointConfigName": target})
        stub.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:endpoint-config/t"},
            {
                "EndpointConfigName": target,
                "DataCaptureConfig": capture,
                "Tags": ANY,
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": previous,
                        "InitialInstanceCount": 1,
                        "InstanceType": "ml.c5.large",
                    }
                ],
            },
        )
        _stub_instance_types(stub, (current, "ml.c5.large"), (target, "ml.c5.large"))
        stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/x"})
        stub.add_response("describe_endpoint", _endpoint(settings, target, "InService", T0 + dt.timedelta(seconds=60)))
        result = hosting.rollback()
        stub.assert_no_pending_responses()
    assert (result.outcome, result.live_version) == ("deployed", V1)
    assert Registry(storage, settings).live()["job"] == V1


def test_the_reader_reads_capture_from_s3_as_from_the_local_bucket(env):
    """What SageMaker writes under DestinationS3Uri, read through S3Storage (the pipeline's role reads it)."""
    from pathlib import Path

    from distracted_driver.monitor.capture import iter_capture_records

    settings, storage, _ = env
    fixtures = Path(__file__).parent / "data" / "capture"
    first = f"capture/{settings.endpoint_name}/AllTraffic/2022/02/14/17/25-49-000-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee.jsonl"
    later = f"capture/{settings.endpoint_name}/AllTraffic/2022/02/14/17/40-02-000-0f3c2b1a-4d5e-4f60-8a7b-9c0d1e2f3a4b.jsonl"
    s3 = boto3.client("s3", region_name="us-east-1")  # SageMaker writes these, not our code (nor our role)
    s3.put_object(Bucket=BUCKET, Key=first, Body=(fixtures / "documented-csv.jsonl").read_bytes())
    s3.put_object(Bucket=BUCKET, Key=later, Body=(fixtures / "image-json.jsonl").read_bytes())
    records = list(iter_capture_records(storage, settings.capture_prefix, settings.endpoint_name))
    assert [r.key for r in records] == [first, first, later]
    since = dt.datetime(2022, 2, 14, 17, 30, tzinfo=dt.UTC)  # the same hour's folder, a later record
    [image] = iter_capture_records(storage, settings.capture_prefix, settings.endpoint_name, since=since)
    assert image.input_bytes.startswith(b"\xff\xd8") and len(image.output) == 10


# --- the typed status, and the smoke check through SageMaker Runtime ----------------------------------


def test_status_is_typed_on_sagemaker_absent_and_in_service(env):
    settings, storage, hosting = env
    absent = hosting.status()
    assert isinstance(absent, EndpointStatus) and not absent.exists and absent.live_version is None
    assert hosting.deploy(_spec(settings, V1), TrafficRouting(), AlarmThresholds()).outcome == "deployed"
    status = hosting.status()
    assert (status.backend, status.exists, status.serves(V1), status.serves(V2)) == ("aws", True, True, False)
    assert status.details["config"] == version_resource_name(settings.endpoint_name, V1)
    assert status.to_dict()["live_version"] == V1


def test_a_new_endpoint_whose_answers_fail_the_smoke_check_is_removed(aws, tmp_path, make_artifact, runtime_answers):
    runtime_answers(b"<html>not probabilities</html>")
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    _push_image()
    settings, storage = _settings(tmp_path), S3Storage(BUCKET)
    make_artifact(V1, seed=1).publish(storage, settings)
    hosting = SageMakerHosting(settings, storage=storage, poll_seconds=0, progress=False)
    result = hosting.deploy(
        _spec(settings, V1), TrafficRouting(), AlarmThresholds(), smoke_images=[b"\xff\xd8\xffjpeg"]
    )
    assert result.outcome == "failed" and "smoke test" in result.reason and "not JSON" in result.reason
    assert not hosting.status().exists  # nothing serves what failed
    assert Registry(storage, settings).live() is None
