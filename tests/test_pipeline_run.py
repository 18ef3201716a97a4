"""Pipeline runs on a real local stack: idempotent reruns, what a change redoes, gate rejection, resume.

One module-wide bucket: the first run trains, gates and deploys for real (frozen backbone,
96 px, a 240-image sample); the tests after it change one input at a time and read the
run records to see which stages did work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from pipeline_support import (
    add_batch,
    cli_flags,
    environment,
    fast_options,
    run_cli,
    sample_batch,
    stop_stack,
)
from waiting import wait_until

from distracted_driver.config import Settings
from distracted_driver.model.registry import Registry
from distracted_driver.pipeline.options import RunOptions
from distracted_driver.pipeline.records import DONE, FAILED, REUSED, RUNNING, SKIPPED, RunStore
from distracted_driver.pipeline.run import run_pipeline
from distracted_driver.storage import open_storage
from distracted_driver.system import process_gone

pytestmark = pytest.mark.slow


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A bucket with an 8-driver sample, after one pipeline run that deployed its model."""
    root = tmp_path_factory.mktemp("pipeline")
    settings = Settings(root=root)
    add_batch(settings, sample_batch(root / "batch-1", drivers=8, per_class=3, seed=1))
    try:
        record = run_pipeline(settings, fast_options(), log=quiet, stream=None, progress=False)
        yield settings, record
    finally:
        stop_stack(settings)


def store_of(settings: Settings) -> RunStore:
    return RunStore(open_storage(settings), settings)


def live_of(settings: Settings) -> str:
    return Registry(open_storage(settings), settings).live()["job"]


def test_the_first_run_does_every_stage_and_deploys(first_run):
    from distracted_driver.train.gate import SMOKE_TOLERANCE

    settings, record = first_run
    assert record.outcome == "deployed", record.reason
    assert [(s.name, s.status) for s in record.stages] == [
        ("materialize", DONE),
        ("convert", DONE),
        ("upload", DONE),
        ("train", DONE),
        ("evaluate", DONE),
        ("gate", DONE),
        ("deploy", DONE),
        ("smoke", DONE),
        ("loadtest", SKIPPED),
    ]
    assert live_of(settings) == record.model_version
    stored = store_of(settings).load(record.run_id)  # what the bucket holds is what the run returned
    assert stored.to_dict() == record.to_dict()
    convert, train = stored.stage("convert"), stored.stage("train")
    assert convert.inputs["raw_listing_sha256"] and convert.inputs["code"] and convert.input_hash
    assert (
        train.inputs["data_sha256"] == convert.outputs["data_sha256"] == stored.stage("upload").outputs["data_sha256"]
    )
    assert train.inputs["hyperparameters"] == {"epochs": "15", "image-size": "96"}
    assert stored.stage("gate").outputs["passed"] and stored.stage("deploy").outputs["outcome"] == "deployed"
    gate, evaluate, smoke = (stored.stage(name).outputs for name in ("gate", "evaluate", "smoke"))
    assert gate["candidate_log_loss"] == pytest.approx(evaluate["log_loss"], abs=1e-6)  # scored by the gate itself
    assert gate["smoke_images"] == 20 and smoke["requests"] == 20  # 2 validation images per class
    assert smoke["max_difference"] < SMOKE_TOLERANCE and smoke["accuracy"] >= smoke["gate_accuracy"]
    assert stored.raw_manifest == "000001"


def test_a_rerun_with_nothing_changed_says_so_in_one_line_without_loading_torch(first_run):
    settings, first = first_run
    run = run_cli(settings, "pipeline.run", *cli_flags(fast_options()), python_flags=("-X", "importtime"))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nothing-to-do: no input changed; model "), run.stdout
    assert first.model_version in lines[0]
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "distracted_driver.pipeline.run" in imported
    assert not {"torch", "onnxruntime", "locust"} & imported
    record = store_of(settings).latest()
    assert record.outcome == "nothing-to-do" and record.exit_code == 0
    assert not [s.name for s in record.stages if s.status == DONE]
    assert {s.name: s.source_run for s in record.stages if s.status == REUSED}["train"] == first.run_id
    assert live_of(settings) == first.model_version


def test_changed_hyperparameters_retrain_without_converting_again(first_run):
    settings, first = first_run
    options = fast_options(hyperparameters={"epochs": 14, "image-size": 96})
    record = run_pipeline(settings, options, log=quiet, stream=None, progress=False)
    assert record.outcome in ("deployed", "rejected-by-gate"), record.reason
    status = {s.name: s.status for s in record.stages}
    assert status["materialize"] == SKIPPED and status["convert"] == REUSED and status["upload"] == REUSED
    assert record.stage("convert").source_run == first.run_id
    assert record.stage("convert").input_hash == first.stage("convert").input_hash
    assert status["train"] == DONE and record.model_version != first.model_version
    assert record.stage("train").inputs["hyperparameters"]["epochs"] == "14"
    assert record.stage("train").inputs["data_sha256"] == first.stage("train").inputs["data_sha256"]


def test_a_worse_candidate_is_rejected_by_the_gate_and_the_same_rerun_has_nothing_to_do(first_run):
    settings, _ = first_run
    live = live_of(settings)
    # A learning rate this far off leaves the classifier head confidently wrong.
    options = fast_options(hyperparameters={"epochs": 3, "image-size": 96, "learning-rate": 50})
    run = run_cli(settings, "pipeline.run", *cli_flags(options))
    assert run.returncode == 3, run.stdout + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith("rejected-by-gate: gate: ")
    record = store_of(settings).latest()
    assert record.outcome == "rejected-by-gate" and not record.stage("gate").outputs["passed"]
    assert record.stage("deploy").status == "pending" and live_of(settings) == live
    again = run_cli(settings, "pipeline.run", *cli_flags(options))
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert again.stdout.strip().startswith("nothing-to-do: inputs unchanged since run "), again.stdout
    assert "whose candidate the gate rejected" in again.stdout
    assert live_of(settings) == live


def test_an_alarm_during_the_canary_rolls_back_and_the_live_model_stays(first_run):
    from distracted_driver.hosting import open_hosting
    from distracted_driver.hosting.smoke import smoke_images

    settings, _ = first_run
    live = live_of(settings)
    hosting = open_hosting(settings)
    image = smoke_images(open_storage(settings), settings, 1)[0]
    stop, failures, answered = threading.Event(), [], []

    def traffic():
        while not stop.is_set():
            try:
                answered.append(hosting.invoke(image)[1])
            except Exception as error:  # noqa: BLE001 - any failed request is a finding
                failures.append(repr(error))
            time.sleep(0.02)  # a steady client, not a wait

    client = threading.Thread(target=traffic)
    client.start()
    try:
        # No request answers within 0.01 ms: green's p99 alarm fires as soon as the canary gets traffic.
        options = fast_options(
            hyperparameters={"epochs": 15, "image-size": 96, "seed": 5},
            gate_tolerance=5.0,
            canary_percent=50,
            wait_seconds=4.0,
            alarm_max_p99_ms=0.01,
        )
        record = run_pipeline(settings, options, log=quiet, stream=None, progress=False)
    finally:
        stop.set()
        client.join(timeout=60)
    assert record.outcome == "rolled-back" and record.exit_code == 4, record.reason
    assert "p99 latency" in record.reason and record.stage("deploy").outputs["outcome"] == "rolled-back"
    assert record.stage("smoke").status == "pending"
    assert live_of(settings) == live and hosting.status().live_version == live
    assert failures == [] and len(answered) > 20


def _wait_for_stage(settings: Settings, run_ids_before: set[str], stage: str, timeout: float = 180) -> str:
    store = store_of(settings)

    def running_run() -> str | None:
        new = sorted(set(store.run_ids()) - run_ids_before)
        return new[-1] if new and store.load(new[-1]).stage(stage).status == RUNNING else None

    return wait_until(running_run, timeout, interval_s=0.2, what=f"a new run to reach {stage}")


def _wait_for_training_epochs(settings: Settings, jobs_before: set[str], timeout: float = 180) -> str:
    """The new training job, once its script has logged its first epoch."""

    def job_past_first_epoch() -> str | None:
        for status in settings.work_dir.glob("jobs/*/status.json"):
            job, log = status.parent.name, status.parent / "train.log"
            if job not in jobs_before and log.is_file() and "epoch 1/" in log.read_text(errors="replace"):
                return job
        return None

    return wait_until(job_past_first_epoch, timeout, interval_s=0.2, what="a new training job's first epoch")


def test_a_run_killed_during_training_is_resumed_with_its_own_options_in_a_new_record(first_run, tmp_path, caplog):
    """`pipeline.run --resume` with no flags, after SIGKILL of a run asked for other hyperparameters: the resume
    retrains with those, in a record of its own; the killed run's record and its training job are closed, with why."""
    settings, first = first_run
    add_batch(settings, sample_batch(tmp_path / "new-drivers", drivers=2, per_class=3, seed=7, first_driver=90))
    options = fast_options(hyperparameters={"epochs": 13, "image-size": 96})
    store = store_of(settings)
    runs_before = set(store.run_ids())
    jobs_before = {p.parent.name for p in settings.work_dir.glob("jobs/*/status.json")}
    child = subprocess.Popen(
        [sys.executable, "-m", "distracted_driver.pipeline", "run", "--options", json.dumps(options.to_dict())],
        env=environment(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        run_id = _wait_for_stage(settings, runs_before, "train")
        job = _wait_for_training_epochs(settings, jobs_before)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # the run, with no chance to clean up; its training script is orphaned
        child.wait()
    try:
        _resume_after_the_kill(settings, first, options, run_id, job, caplog)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # whatever of the group a failed check left running


def _resume_after_the_kill(settings, first, options, run_id, job, caplog):
    store, storage = store_of(settings), open_storage(settings)
    killed = store.load(run_id)
    assert killed.outcome == "" and killed.stage("train").status == RUNNING
    assert [killed.stage(n).status for n in ("materialize", "convert", "upload")] == [DONE, DONE, DONE]
    assert json.loads(storage.get_bytes(f"models/{job}/status.json"))["status"] == "InProgress"

    logged = []
    with caplog.at_level(logging.WARNING, logger="distracted_driver.pipeline.lock"):
        resumed = run_pipeline(settings, RunOptions(resume=True), log=logged.append, stream=None, progress=False)
    assert "taking over a stale pipeline lock of run" in caplog.text  # the killed run's lock

    # The killed run's record: closed as failed:train with the reason, and otherwise as it was left.
    closed = store.load(run_id)
    assert closed.outcome == "failed:train" and closed.reason.startswith("interrupted: its process (pid ")
    assert closed.finished and closed.stage("train").status == FAILED
    for name in ("materialize", "convert", "upload"):
        assert closed.stage(name) == killed.stage(name)
    # Its training job: Stopped, with the reason, and its script no longer running.
    status = json.loads(storage.get_bytes(f"models/{job}/status.json"))
    assert status["status"] == "Stopped" and status["ended"]
    assert "is gone" in status["failure_reason"] and f"pipeline run {resumed.run_id}" in status["failure_reason"]
    script = status["script"]
    assert process_gone(script["host"], script["pid"], script["pid_started"])

    # The resume: a new record naming the killed run, with the killed run's options, retraining as asked.
    assert resumed.run_id not in (run_id, first.run_id) and resumed.resumes == run_id
    assert resumed.options == {**options.to_dict(), "resume": True}
    assert resumed.outcome in ("deployed", "rejected-by-gate"), resumed.reason
    for name in ("materialize", "convert", "upload"):  # taken over from the killed run, not redone
        stage = resumed.stage(name)
        assert (stage.status, stage.source_run, stage.outputs) == (REUSED, run_id, killed.stage(name).outputs)
    train = resumed.stage("train")
    assert train.status == DONE and train.inputs["hyperparameters"] == {"epochs": "13", "image-size": "96"}
    assert resumed.model_version not in (job, first.model_version) and resumed.raw_manifest == "000002"
    assert any(f"training job {job}: recorded as Stopped" in line for line in logged)
    assert set(store.run_ids()) >= {run_id, resumed.run_id}
    assert not storage.exists("pipeline/lock")


def test_serving_that_differs_from_what_the_gate_scored_is_rolled_back_by_the_smoke_stage(first_run):
    """Training/serving skew: the endpoint's copy of the candidate normalises pixels as ImageNet does."""
    from model_fixtures import IMAGENET_NORMALISATION

    from distracted_driver.hosting import open_hosting

    settings, _ = first_run
    live = live_of(settings)
    options = fast_options(hyperparameters={"epochs": 15, "image-size": 96, "seed": 6}, gate_tolerance=5.0)
    deployed = run_pipeline(settings, options, log=quiet, stream=None, progress=False)
    assert deployed.outcome == "deployed" and deployed.stage("smoke").status == DONE, deployed.reason
    candidate = deployed.model_version
    hosting = open_hosting(settings)
    assert hosting.rollback().live_version == live
    # The candidate's copy on the endpoint drifts; the bucket's artifact and the gate's record stay as they were.
    served_copy = hosting.paths.model_dir(candidate) / "preprocess.json"
    served_copy.write_text(json.dumps({**json.loads(served_copy.read_text()), **IMAGENET_NORMALISATION}))

    record = run_pipeline(settings, options, log=quiet, stream=None, progress=False)
    assert record.outcome == "rolled-back" and record.exit_code == 4, record.reason
    assert record.stage("gate").status == REUSED and record.stage("deploy").outputs["outcome"] == "deployed"
    assert "serving differs from evaluation" in record.reason and f"rolled back to {live}" in record.reason
    assert live_of(settings) == live and hosting.status().live_version == live
