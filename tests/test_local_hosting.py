"""LocalHosting end to end: create, no-op redeploy, a runtime that outlives its command, restart, and down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from hosting_support import hosted, our_processes  # noqa: F401
from waiting import wait_until

from distracted_driver.hosting import open_hosting
from distracted_driver.hosting.base import ModelSpec, TrafficRouting
from distracted_driver.hosting.local import LocalHosting
from distracted_driver.logs import LogRotation
from distracted_driver.model.registry import Registry

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).with_name("inv")


def test_open_hosting_picks_the_local_runtime(hosted):
    assert isinstance(open_hosting(hosted.settings), LocalHosting)


def test_first_deploy_creates_the_endpoint_and_a_redeploy_is_a_no_op(hosted, make_artifact):
    spec = ModelSpec("lh-v1", hosted.publish(make_artifact("lh-v1", seed=1)))
    created = hosted.hosting.deploy(spec, TrafficRouting(strategy="canary"), smoke_images=hosted.smoke)
    assert (created.outcome, created.live_version) == ("deployed", "lh-v1")
    assert "shifting" not in created.timings  # creating an endpoint moves no traffic: there is no blue
    status = hosted.hosting.status()
    assert status.status == "InService" and status.instance_count == 1
    assert status.runtime_url.startswith("http://127.0.0.1:")
    assert status.last_deployment["kind"] == "create"
    assert Registry(hosted.storage, hosted.settings).live()["job"] == "lh-v1"

    again = hosted.hosting.deploy(spec, TrafficRouting(strategy="canary"), smoke_images=hosted.smoke)
    assert (again.outcome, again.live_version) == ("unchanged", "lh-v1")
    assert hosted.hosting.status().last_deployment["id"] == status.last_deployment["id"]


def _inv(settings, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "DD_ROOT": str(settings.root)}
    return subprocess.run([str(INV), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_runtime_outlives_the_deploying_command_and_down_stops_everything(hosted, make_artifact):
    hosted.publish(make_artifact("lh-v1", seed=1))
    # --force: this bucket holds no validation data for the gate to score the tiny model on.
    deployed = _inv(
        hosted.settings, "deploy.swap", "--model", "lh-v1", "--strategy", "all-at-once", "--bake", "0", "--force"
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "deployed: endpoint distracted-driver, live model lh-v1" in deployed.stdout

    # The inv process is gone; the endpoint is not.
    answer = hosted.client().invoke_endpoint(
        EndpointName="distracted-driver", ContentType="image/jpeg", Body=hosted.smoke[0]
    )
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-model-version"] == "lh-v1"

    shown = _inv(hosted.settings, "deploy.status", "--json")
    status = json.loads(shown.stdout)
    assert status["live_version"] == "lh-v1" and status["status"] == "InService"
    assert status["runtime_url"] == hosted.url()
    assert [i["state"] for i in status["instances"]] == ["in-service"]
    supervisor = int((Path(hosted.settings.state_dir) / "supervisor" / "supervisord.pid").read_text())
    pids = {supervisor, status["details"]["runtime"]["pid"]} | {i["pid"] for i in status["instances"]}
    assert {p.pid for p in our_processes(hosted.settings)} == pids

    down = _inv(hosted.settings, "deploy.down")
    assert down.returncode == 0, down.stderr
    assert our_processes(hosted.settings) == []
    after = json.loads(_inv(hosted.settings, "deploy.status", "--json").stdout)
    assert after["runtime_running"] is False and after["status"] == "absent" and after["runtime_url"] is None


def test_a_restarted_runtime_brings_the_endpoint_back(hosted, make_artifact):
    spec = ModelSpec("lh-v1", hosted.publish(make_artifact("lh-v1", seed=1)), instance_count=2)
    assert hosted.hosting.deploy(spec, smoke_images=hosted.smoke).outcome == "deployed"
    url = hosted.url()
    hosted.hosting.stop_runtime()
    assert our_processes(hosted.settings) == []
    stopped = hosted.hosting.status()  # read from state.json alone: recorded InService, but nothing serves
    assert stopped.runtime_running is False
    assert (stopped.status, stopped.recorded_status, stopped.live_version) == ("OutOfService", "InService", "lh-v1")
    assert "the runtime is not running" in stopped.status_reason

    hosted.hosting.runtime()  # starts the daemon, which restores what state.json holds
    wait_until(lambda: hosted.hosting.status().instance_count == 2, timeout_s=30, what="two instances restored")
    assert hosted.url() == url  # the same port again, so clients holding the URL keep working
    answer = hosted.client().invoke_endpoint(
        EndpointName="distracted-driver", ContentType="image/jpeg", Body=hosted.smoke[0]
    )
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-model-version"] == "lh-v1"


def test_a_killed_runtime_is_restarted_and_takes_over_its_running_instances(hosted, make_artifact):
    spec = ModelSpec("lh-v1", hosted.publish(make_artifact("lh-v1", seed=1)), instance_count=2)
    assert hosted.hosting.deploy(spec, smoke_images=hosted.smoke).outcome == "deployed"
    before = hosted.hosting.status()
    instances = {i["id"]: i["pid"] for i in before.instances}
    os.kill(before.details["runtime"]["pid"], signal.SIGKILL)  # no chance to stop anything itself

    after = wait_until(
        lambda: (
            (s := hosted.hosting.status()).runtime_running
            and s.instance_count == 2
            and s.details["runtime"]["pid"] != before.details["runtime"]["pid"]
            and s
        ),
        timeout_s=30,
        what="the supervisor to restart the runtime with two instances",
    )
    assert after.status == "InService"
    assert {i["id"]: i["pid"] for i in after.instances} == instances  # the same processes, warm
    assert after.runtime_url == before.runtime_url  # the same port: clients holding the URL keep working
    answer = hosted.client().invoke_endpoint(
        EndpointName="distracted-driver", ContentType="image/jpeg", Body=hosted.smoke[0]
    )
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-model-version"] == "lh-v1"
    supervisor = int((Path(hosted.settings.state_dir) / "supervisor" / "supervisord.pid").read_text())
    assert {p.pid for p in our_processes(hosted.settings)} == {
        supervisor,
        after.details["runtime"]["pid"],
        *instances.values(),
    }


def test_a_runtime_killed_with_nothing_to_restart_it_leaves_instances_the_next_one_takes_over_or_kills(
    hosted, make_artifact
):
    spec = ModelSpec("lh-v1", hosted.publish(make_artifact("lh-v1", seed=1)), instance_count=2)
    assert hosted.hosting.deploy(spec, smoke_images=hosted.smoke).outcome == "deployed"
    before = hosted.hosting.status()
    supervisor_dir = Path(hosted.settings.state_dir) / "supervisor"
    os.kill(int((supervisor_dir / "supervisord.pid").read_text()), signal.SIGKILL)
    os.kill(before.details["runtime"]["pid"], signal.SIGKILL)
    wait_until(lambda: not hosted.hosting.status().runtime_running, timeout_s=10, what="the runtime to be gone")
    status = hosted.hosting.status()
    assert status.status == "OutOfService" and "nothing restarts it" in status.status_reason

    hosted.hosting.runtime()  # a new supervisor stops what the killed one left (instances included), then starts afresh
    after = wait_until(
        lambda: (s := hosted.hosting.status()).instance_count == 2 and s,
        timeout_s=60,
        what="two instances in service again",
    )
    assert not {i["pid"] for i in before.instances} & {i["pid"] for i in after.instances}
    assert len([p for p in our_processes(hosted.settings) if "serve.server" in " ".join(p.cmdline())]) == 2


def test_the_runtime_and_instance_logs_are_rotated(hosted, make_artifact):
    hosted.hosting.log_rotation = LogRotation(max_bytes=1024, backups=2)  # before the runtime starts
    spec = ModelSpec("lh-v1", hosted.publish(make_artifact("lh-v1", seed=1)), instance_count=2)
    assert hosted.hosting.deploy(spec, smoke_images=hosted.smoke).outcome == "deployed"
    hosting_dir = Path(hosted.settings.state_dir) / "hosting"
    runtime_logs = sorted(p.name for p in hosting_dir.glob("runtime.log*"))
    assert runtime_logs[:2] == ["runtime.log", "runtime.log.1"] and len(runtime_logs) <= 3, runtime_logs
    assert all((hosting_dir / name).stat().st_size <= 1024 for name in runtime_logs)
    for instance in hosted.hosting.status().instances:
        command = psutil.Process(instance["pid"]).cmdline()
        assert command[command.index("--log-file") + 1] == instance["log"]
        assert command[command.index("--log-max-bytes") + 1] == "1024"
        assert Path(instance["log"]).stat().st_size > 0  # the server writes it itself, through its handler
