"""The local stack heals itself and tells the truth about it.

One stack for the module (a one-instance endpoint of a tiny real model, the
API gateway in front, both programs of the state directory's supervisord),
and faults as an operator meets them: a daemon killed under load, a runtime
stopped by hand, a supervisor killed, a model that cannot start again. Each
test leaves the stack serving for the next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import requests
from api_stack import start_stack
from hosting_support import LoadLoop, Outcome, our_processes
from waiting import wait_until

from distracted_driver.gateway import gateway_status
from distracted_driver.hosting.local import LocalHosting

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).with_name("inv")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, make_artifact):
    stack = start_stack(tmp_path_factory.mktemp("healing"), make_artifact("heal-1", seed=4))
    yield stack
    stack.close()
    assert our_processes(stack.settings) == []


def frames(count: int = 4) -> list[bytes]:
    rng = np.random.default_rng(11)
    return [
        cv2.imencode(".jpg", rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))[1].tobytes() for _ in range(count)
    ]


def api_sender(stack):
    """For LoadLoop: each thread posts to the REST API with its own connection pool."""

    def make():
        session = requests.Session()

        def send(image: bytes) -> Outcome:
            answer = session.post(
                stack.predict_url,
                data=image,
                timeout=30,
                headers={"x-api-key": stack.api_key, "Content-Type": "image/jpeg"},
            )
            return Outcome(
                answer.status_code == 200, error=None if answer.ok else f"{answer.status_code} {answer.text[:120]}"
            )

        return send

    return make


def serving(stack) -> dict | None:
    """The gateway's status once it is healthy (its endpoint serves), else None."""
    status = gateway_status(stack.settings)
    return status if status["healthy"] else None


def _inv(stack, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "DD_ROOT": str(stack.settings.root)}
    return subprocess.run([str(INV), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_runtime_killed_under_load_is_back_within_seconds(stack):
    hosting = LocalHosting(stack.settings)
    before = hosting.status()
    with LoadLoop(None, frames(), threads=2, max_seconds=90, sender=api_sender(stack)) as load:
        load.wait_for(20)
        os.kill(before.details["runtime"]["pid"], signal.SIGKILL)
        killed = len(load.outcomes)
        wait_until(lambda: serving(stack), timeout_s=30, interval_s=0.1, what="the endpoint to serve again")
        load.wait_for(len(load.outcomes) + 20)
    outcomes = load.stop()
    after = hosting.status()
    assert after.status == "InService" and after.details["runtime"]["pid"] != before.details["runtime"]["pid"]
    assert after.runtime_url == before.runtime_url
    assert all(o.ok for o in outcomes[: killed - 2]), "requests failed before the kill"
    assert all(o.ok for o in outcomes[-10:]), [o.error for o in outcomes[-10:]]


def test_a_gateway_killed_under_load_comes_back_on_its_url(stack):
    before = gateway_status(stack.settings)
    with LoadLoop(None, frames(), threads=2, max_seconds=60, sender=api_sender(stack)) as load:
        load.wait_for(20)
        os.kill(before["pid"], signal.SIGKILL)
        after = wait_until(
            lambda: (s := serving(stack)) and s["pid"] != before["pid"] and s,
            timeout_s=30,
            interval_s=0.1,
            what="a new gateway process that serves",
        )
        load.wait_for(len(load.outcomes) + 20)
    outcomes = load.stop()
    assert after["url"] == before["url"]
    assert all(o.ok for o in outcomes[-10:]), [o.error for o in outcomes[-10:]]


def test_with_the_runtime_stopped_every_status_says_nothing_serves_and_why(stack):
    hosting = LocalHosting(stack.settings)
    hosting.stop_runtime()  # stopped for good: out of supervision too
    try:
        status = hosting.status()
        assert (status.status, status.recorded_status) == ("OutOfService", "InService")
        assert "the runtime is not running" in status.status_reason and "nothing restarts it" in status.status_reason
        shown = _inv(stack, "deploy.status")
        assert (
            shown.returncode == 0
            and "OutOfService" in shown.stdout
            and "why: the runtime is not running" in shown.stdout
        )

        health = requests.get(f"{stack.url}/health", timeout=10)
        assert health.status_code == 503 and "does not answer" in health.json()["message"]
        api = json.loads(_inv(stack, "api.status", "--json").stdout)
        assert api["running"] is True and api["healthy"] is False and "does not answer" in api["problem"]
        text = _inv(stack, "api.status").stdout
        assert "the endpoint does not serve" in text and "does not answer" in text
    finally:
        hosting.runtime()  # what any deploy command does: starts it, under supervision again
    wait_until(lambda: serving(stack), timeout_s=30, what="the endpoint to serve again")


def test_an_endpoint_whose_instances_cannot_start_is_out_of_service_and_says_why(stack):
    hosting = LocalHosting(stack.settings)
    model_dir = Path(stack.settings.state_dir) / "hosting" / "models" / stack.model_version
    hidden = model_dir.with_name(model_dir.name + ".hidden")
    model_dir.rename(hidden)  # the instance's replacement will find no model
    try:
        instance = hosting.status().instances[0]
        os.kill(instance["pid"], signal.SIGKILL)
        status = wait_until(
            lambda: (
                (s := hosting.status()).status == "OutOfService" and "did not start" in (s.status_reason or "") and s
            ),
            timeout_s=30,
            what="the failed replacement to show",
        )
        assert status.recorded_status == "InService" and status.instance_count == 0
        health = requests.get(f"{stack.url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["endpoint_health"]["status"] == "OutOfService"
        assert "no instance is in service" in health.json()["message"]
        assert str(stack.settings.root) not in health.text  # the reason with its log path stays in deploy.status
    finally:
        hidden.rename(model_dir)
    wait_until(lambda: serving(stack), timeout_s=60, what="a replacement to start once the model is back")


def test_a_new_supervisor_replaces_what_a_killed_one_left_running(stack):
    supervisor_dir = Path(stack.settings.state_dir) / "supervisor"
    hosting = LocalHosting(stack.settings)
    before = hosting.status()
    os.kill(int((supervisor_dir / "supervisord.pid").read_text()), signal.SIGKILL)
    os.kill(before.details["runtime"]["pid"], signal.SIGKILL)  # and now nothing restarts the runtime
    wait_until(lambda: not hosting.status().runtime_running, timeout_s=10, what="the runtime to be gone")
    status = hosting.status()
    assert status.status == "OutOfService" and "nothing restarts it" in status.status_reason

    hosting.runtime()  # a new supervisord: it stops the orphaned gateway and starts its own
    wait_until(lambda: serving(stack), timeout_s=40, what="the stack to serve again")
    gateways = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "distracted_driver.gateway.app" in " ".join(p.info["cmdline"] or [])
        and str(stack.settings.root) in " ".join(p.info["cmdline"] or [])
    ]
    assert len(gateways) == 1 and gateways[0].pid == gateway_status(stack.settings)["pid"]
    assert gateway_status(stack.settings)["url"] == stack.url
