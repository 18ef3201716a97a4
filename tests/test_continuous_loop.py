"""The whole loop on loopback: new data lands, the watcher runs the pipeline, the endpoint changes model.

Real processes throughout: the local hosting runtime with its model servers, the API
gateway running the Lambda handler, the watcher (``inv pipeline.watch``) and the runs it
starts, training jobs, Locust. A client keeps calling the REST API during all of it and
must see no failed request.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from pipeline_support import (
    INV,
    REPO,
    add_batch,
    cli_flags,
    environment,
    fast_options,
    first_driver_keeping_validation_unseen,
    mislabeled_batch,
    sample_batch,
    stop_stack,
)
from waiting import OutputLines, wait_until

from distracted_driver.config import Settings
from distracted_driver.gateway import start_gateway
from distracted_driver.gateway.client import predict_image
from distracted_driver.model.registry import Registry
from distracted_driver.pipeline.records import RunStore
from distracted_driver.pipeline.run import run_pipeline
from distracted_driver.storage import open_storage

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 240  # one pipeline run of this test's size takes about a minute on two busy cores


@dataclass
class ClientLoop:
    """Calls the REST API back to back from a thread until stopped; remembers every answer."""

    predict_url: str
    api_key: str
    image: bytes
    answers: list[tuple[float, int, str | None]] = field(default_factory=list)  # (time, status, model version)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ClientLoop:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status, answer = predict_image(self.predict_url, self.api_key, self.image, "image/jpeg", timeout_s=30)
            except OSError as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                continue
            self.answers.append((time.time(), status, answer.get("model_version")))
            if status != 200:
                self.errors.append(f"{status}: {answer}")
            time.sleep(0.05)  # a steady client, not a wait

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def versions(self) -> list[str]:
        """Model versions in the order they answered, consecutive repeats collapsed."""
        seen: list[str] = []
        for _, _, version in self.answers:
            if version and (not seen or seen[-1] != version):
                seen.append(version)
        return seen


def wait_for_run(store: RunStore, known: set[str], timeout: float = RUN_TIMEOUT_S):
    """The first run not in ``known`` once it has an outcome."""

    def finished():
        records = (store.load(run_id) for run_id in sorted(set(store.run_ids()) - known))
        return next((record for record in records if record.outcome), None)

    return wait_until(finished, timeout, interval_s=0.5, what="a new pipeline run to finish")


def test_new_data_is_trained_gated_and_deployed_without_a_failed_request(tmp_path):
    settings = Settings(root=tmp_path)
    storage = open_storage(settings)
    store, registry = RunStore(storage, settings), Registry(storage, settings)
    options = fast_options(wait_seconds=2.0, bake_seconds=2.0, load_seconds=4.0, load_users=2, load_spawn_rate=2.0)
    watcher = client = None
    try:
        # The stack as `make demo` leaves it: a deployed model and the REST API in front of it.
        add_batch(settings, sample_batch(tmp_path / "batch-1", drivers=8, per_class=3, seed=1))
        first = run_pipeline(
            settings,
            options.__class__(**{**options.to_dict(), "load_seconds": 0.0}),
            log=lambda m: None,
            stream=None,
            progress=False,
        )
        assert first.outcome == "deployed", first.reason
        api = start_gateway(settings, port=0)
        image = next((tmp_path / "batch-1" / "imgs" / "train" / "c0").glob("*.jpg")).read_bytes()
        client = ClientLoop(api["predict_url"], api["api_key"], image).start()

        watcher = subprocess.Popen(
            [
                sys.executable,
                str(INV),
                "pipeline.watch",
                "--interval=1",
                "--max-runs=2",
                "--timeout=600",
                *cli_flags(options),
                "--load-users=2",
            ],
            cwd=REPO,
            env=environment(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = OutputLines(watcher.stdout)
        output.wait_for("watching ", timeout_s=60, process=watcher)  # it has listed the manifests already there

        # New drivers: a better-informed model that passes the gate and goes live blue/green.
        manifest = json.loads(storage.get_bytes("data/manifest.json"))
        subjects = json.loads(storage.get_bytes("raw/manifests/000001.json"))["counts"]["per_subject"]
        first_new = first_driver_keeping_validation_unseen(
            subjects, set(manifest["splits"]["validation"]["drivers"]), drivers=3
        )
        known = set(store.run_ids())
        add_batch(settings, sample_batch(tmp_path / "batch-2", drivers=3, per_class=3, seed=7, first_driver=first_new))
        second = wait_for_run(store, known)
        assert second.outcome == "deployed", second.reason
        assert second.raw_manifest == "000002" and second.model_version != first.model_version
        assert second.stage("deploy").outputs["strategy"] == "canary"
        assert second.stage("loadtest").status == "done" and second.stage("smoke").status == "done"
        assert registry.live()["job"] == second.model_version
        wait_until(
            lambda: client.versions()[-1:] == [second.model_version],
            timeout_s=30,
            what="the client to be answered by the new model",
        )

        # Labels shuffled on frames credited to the training drivers: the gate keeps the live model.
        manifest = json.loads(storage.get_bytes("data/manifest.json"))
        known = set(store.run_ids())
        add_batch(
            settings,
            mislabeled_batch(
                tmp_path / "batch-3", manifest["splits"]["train"]["drivers"], drivers=6, per_class=3, seed=11
            ),
        )
        third = wait_for_run(store, known)
        assert third.outcome == "rejected-by-gate", third.reason
        assert third.raw_manifest == "000003" and third.stage("deploy").status == "pending"
        assert registry.live()["job"] == second.model_version
        assert watcher.wait(timeout=60) == 0, output.text()
        output = output.until_closed(timeout_s=10)
        assert "new manifest(s) raw/manifests/000002.json: starting a pipeline run" in output
        assert f"run {third.run_id} ended rejected-by-gate (exit 3)" in output
        assert "stopping: 2 run(s) started, the maximum" in output
        client.stop()

        assert client.errors == [], client.errors[:5]
        assert len(client.answers) > 100
        # Only the two deployed models ever answered (both during the canary), the second alone once its run ended.
        assert set(client.versions()) == {first.model_version, second.model_version}
        assert client.versions()[0] == first.model_version
        second_done = datetime.fromisoformat(second.finished).timestamp()
        assert {version for at, _, version in client.answers if at > second_done} == {second.model_version}
    finally:
        if client is not None:
            client.stop()
        if watcher is not None and watcher.poll() is None:
            watcher.send_signal(signal.SIGTERM)
            try:
                watcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                watcher.kill()
                watcher.wait()
        stop_stack(settings)
