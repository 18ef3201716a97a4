"""Outcomes and exit statuses of pipeline runs, run records, history, and the watcher's decisions (no training here)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from waiting import wait_until

from distracted_driver.config import Settings
from distracted_driver.pipeline import outcomes
from distracted_driver.pipeline.lock import PipelineLock
from distracted_driver.pipeline.options import RunOptions, options_from_flags
from distracted_driver.pipeline.records import FAILED, PENDING, RunStore
from distracted_driver.pipeline.run import run_pipeline
from distracted_driver.pipeline.watch import watch
from distracted_driver.storage import open_storage

REPO = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).parent / "inv"


@pytest.fixture
def settings(tmp_path):
    return Settings(root=tmp_path)


def _env(settings: Settings) -> dict:
    return {**os.environ, "DD_ROOT": str(settings.root)}


def test_each_outcome_has_one_exit_status_and_only_successes_are_zero():
    table = dict(outcomes.exit_code_table())
    assert table[outcomes.DEPLOYED] == table[outcomes.NOTHING_TO_DO] == 0
    others = {name: code for name, code in table.items() if name not in (outcomes.DEPLOYED, outcomes.NOTHING_TO_DO)}
    assert all(code != 0 for code in others.values())
    assert len(set(others.values())) == len(others)  # distinct for each
    assert set(others) == {
        outcomes.REJECTED_BY_GATE,
        outcomes.ROLLED_BACK,
        "failed:lock",
        *(f"failed:{stage}" for stage in outcomes.STAGES),
    }
    assert (table[outcomes.REJECTED_BY_GATE], table[outcomes.ROLLED_BACK], table["failed:lock"]) == (3, 4, 9)
    assert [table[f"failed:{s}"] for s in outcomes.STAGES] == list(range(10, 10 + len(outcomes.STAGES)))
    assert outcomes.exit_code("something else") == 1
    with pytest.raises(ValueError):
        outcomes.failed("no-such-stage")


def test_a_run_without_raw_data_fails_at_materialize_and_records_why(settings):
    record = run_pipeline(settings, RunOptions(), log=lambda message: None)
    assert record.outcome == "failed:materialize" and record.exit_code == 10
    assert "inv data.add" in record.reason
    stored = RunStore(open_storage(settings), settings).load(record.run_id)
    assert stored.outcome == "failed:materialize" and stored.stage("materialize").status == FAILED
    assert all(stored.stage(name).status == PENDING for name in outcomes.STAGES[1:])
    assert not open_storage(settings).exists("pipeline/lock")  # released


def test_a_run_refused_by_the_lock_ends_failed_lock_and_writes_no_record(settings):
    storage = open_storage(settings)
    with PipelineLock(storage, settings, "someone-else"):
        record = run_pipeline(settings, RunOptions(), log=lambda message: None)
    assert record.outcome == "failed:lock" and record.exit_code == 9
    assert "someone-else" in record.reason
    assert RunStore(storage, settings).run_ids() == []


@pytest.mark.slow  # `inv` processes
def test_the_cli_exits_with_the_outcome_status_and_history_lists_the_run(settings):
    run = subprocess.run(
        [str(INV), "pipeline.run"], cwd=REPO, env=_env(settings), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 10, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("failed:materialize: materialize: no raw data")
    history = subprocess.run(
        [str(INV), "pipeline.history", "--json"],
        cwd=REPO,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert history.returncode == 0, history.stderr
    runs = json.loads(history.stdout)
    assert len(runs) == 1 and runs[0]["outcome"] == "failed:materialize" and runs[0]["exit_code"] == 10
    assert [s["name"] for s in runs[0]["stages"]] == list(outcomes.STAGES)
    assert all("seconds" in s and "status" in s for s in runs[0]["stages"])
    png = settings.root / "history.png"
    text = subprocess.run(
        [str(INV), "pipeline.history", f"--plot={png}"],
        cwd=REPO,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert runs[0]["run_id"] in text.stdout and "failed:materialize" in text.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flags_become_options_and_bad_ones_are_refused():
    options = options_from_flags(
        epochs="3",
        learning_rate="0.01",
        extra="dropout=0.3,freeze-backbone=false",
        val_drivers="2",
        strategy="linear",
        load_seconds="0",
        resume=True,
    )
    assert options.hyperparameters == {
        "epochs": "3",
        "learning-rate": "0.01",
        "dropout": "0.3",
        "freeze-backbone": "false",
    }
    assert options.convert == {"val_drivers": 2} and options.strategy == "linear"
    assert options.load_seconds == 0.0 and options.resume
    with pytest.raises(ValueError):
        options_from_flags(extra="no-equals-sign")
    with pytest.raises(ValueError):
        options_from_flags(strategy="sideways")


def _tiny_batch(directory: Path) -> Path:
    from distracted_driver.data.sample import generate_sample

    generate_sample(directory, drivers=1, images_per_class_driver=1, test_images=0, seed=3, progress=False)
    return directory


@pytest.mark.slow  # the watcher starts runs as processes
def test_the_watcher_starts_a_run_when_a_manifest_lands_and_stops_at_max_runs(settings, tmp_path, caplog):
    from distracted_driver.data.ingest import add_data

    storage = open_storage(settings)
    batch = _tiny_batch(tmp_path / "batch")

    def land_later():  # once the watcher has listed what was there: nothing
        wait_until(lambda: "watching " in caplog.text, timeout_s=30, what="the watcher to start")
        add_data(storage, settings, batch, progress=False)

    lander = threading.Thread(target=land_later)
    lander.start()
    with caplog.at_level(logging.INFO, logger="distracted_driver.pipeline.watch"):
        runs = watch(settings, RunOptions(load_seconds=0), interval=0.3, max_runs=1, timeout=120)
    lander.join()
    # One driver cannot be split by driver: a real run, ending failed:convert.
    assert [(r.manifests, r.outcome, r.exit_code) for r in runs] == [
        (["raw/manifests/000001.json"], "failed:convert", 11)
    ]
    record = RunStore(storage, settings).load(runs[0].run_id)
    assert record.raw_manifest == "000001" and record.stage("materialize").status == "done"
    assert "new manifest(s) raw/manifests/000001.json: starting a pipeline run" in caplog.text
    assert "ended failed:convert (exit 11)" in caplog.text and "stopping: 1 run(s) started" in caplog.text


@pytest.mark.slow  # the watcher starts runs as processes
def test_the_watcher_waits_while_another_run_holds_the_lock_and_stops_at_its_timeout(settings, tmp_path, caplog):
    from distracted_driver.data.ingest import add_data

    storage = open_storage(settings)
    add_data(storage, settings, _tiny_batch(tmp_path / "batch"), progress=False)
    with (
        PipelineLock(storage, settings, "by-hand"),
        caplog.at_level(logging.INFO, logger="distracted_driver.pipeline.watch"),
    ):
        runs = watch(settings, RunOptions(load_seconds=0), interval=0.5, max_runs=1, timeout=6)
    assert runs == []
    assert "newest raw/manifests/000001.json not yet run" in caplog.text
    assert "another pipeline run holds the lock" in caplog.text and "timeout of 6 s reached" in caplog.text
    assert RunStore(storage, settings).run_ids() == []


@pytest.mark.slow  # the watcher starts runs as processes
def test_a_run_still_going_at_the_watchers_timeout_is_stopped_and_records_where(settings, tmp_path, caplog):
    import psutil

    from distracted_driver.data.ingest import add_data
    from distracted_driver.data.sample import generate_sample

    storage = open_storage(settings)
    generate_sample(tmp_path / "batch", drivers=2, images_per_class_driver=1, test_images=0, seed=3, progress=False)
    add_data(storage, settings, tmp_path / "batch", progress=False)
    # Fine-tuning every weight with no early stopping: training outlasts the timeout on any machine.
    options = RunOptions(
        convert={"val_drivers": 1},
        load_seconds=0,
        hyperparameters={"epochs": 100000, "patience": 100000, "freeze-backbone": "false", "image-size": 96},
    )
    with caplog.at_level(logging.INFO, logger="distracted_driver.pipeline.watch"):
        runs = watch(settings, options, interval=0.5, max_runs=1, timeout=8)
    assert len(runs) == 1 and runs[0].outcome.startswith("failed:"), runs
    record = RunStore(storage, settings).load(runs[0].run_id)
    stage = record.outcome.split(":", 1)[1]
    assert record.stage(stage).status == FAILED and record.stage(stage).reason == "interrupted"
    assert runs[0].exit_code == outcomes.exit_code(record.outcome)
    assert "timeout reached during run: stopping it (SIGTERM)" in caplog.text
    assert not storage.exists("pipeline/lock")
    # Nothing of the run is left: its training job, its converter's worker processes (which exit once
    # they notice their parent is gone).
    ours = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(str(settings.root) in part for part in (p.info["cmdline"] or []))
    ]
    _, alive = psutil.wait_procs(ours, timeout=15)
    assert [p.info["cmdline"] for p in alive] == []


# --- resume: a new record, with the interrupted run's own options; closed records never change ---------


def _record_bytes(settings: Settings, run_id: str) -> bytes:
    return open_storage(settings).get_bytes(f"pipeline/runs/{run_id}.json")


def test_resume_without_options_continues_the_failed_run_with_its_options_in_a_new_record(settings):
    asked = RunOptions(hyperparameters={"epochs": 14, "image-size": 96}, convert={"val_drivers": 2}, strategy="linear")
    failed = run_pipeline(settings, asked, log=lambda message: None)
    assert failed.outcome == "failed:materialize"
    before = _record_bytes(settings, failed.run_id)
    logged = []

    resumed = run_pipeline(settings, RunOptions(resume=True), log=logged.append)  # `inv pipeline.run --resume`
    assert resumed.run_id != failed.run_id and resumed.resumes == failed.run_id
    assert resumed.options == {**asked.to_dict(), "resume": True}
    assert resumed.outcome == "failed:materialize"  # still no raw data: the same stage fails again, in this record
    assert any(f"resuming run {failed.run_id}" in line for line in logged)
    assert _record_bytes(settings, failed.run_id) == before  # the failure stays in history as it was
    store = RunStore(open_storage(settings), settings)
    assert store.run_ids() == sorted([failed.run_id, resumed.run_id])
    assert store.load(resumed.run_id).resumes == failed.run_id


@pytest.mark.slow  # an `inv` process
def test_resume_given_other_options_is_refused_and_records_nothing(settings):
    failed = run_pipeline(settings, RunOptions(hyperparameters={"epochs": 14}), log=lambda message: None)
    with pytest.raises(ValueError, match=f"--resume continues run {failed.run_id} with the options it was started"):
        run_pipeline(settings, RunOptions(resume=True, hyperparameters={"epochs": 3}), log=lambda message: None)
    store = RunStore(open_storage(settings), settings)
    assert store.run_ids() == [failed.run_id]
    assert not open_storage(settings).exists("pipeline/lock")
    same = run_pipeline(settings, RunOptions(resume=True, hyperparameters={"epochs": 14}), log=lambda message: None)
    assert same.resumes == failed.run_id  # repeating the run's own options is not a conflict
    refused = subprocess.run(
        [str(INV), "pipeline.run", "--resume", "--epochs", "3"],
        cwd=REPO,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith(f"--resume continues run {same.run_id}")


def test_a_closed_record_is_never_written_again(settings):
    from distracted_driver.pipeline.records import RecordClosed

    record = run_pipeline(settings, RunOptions(), log=lambda message: None)
    store = RunStore(open_storage(settings), settings)
    record.reason = "something else"
    with pytest.raises(RecordClosed):
        store.save(record)
    assert store.load(record.run_id).reason.startswith("materialize: no raw data")
