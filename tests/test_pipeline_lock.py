"""The pipeline lock in the bucket: exclusive, stale holders taken over, released only by its holder."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from distracted_driver.config import Settings
from distracted_driver.pipeline.lock import LockBusy, LockHolder, PipelineLock
from distracted_driver.storage.local import LocalStorage


@pytest.fixture
def bucket(tmp_path):
    settings = Settings(root=tmp_path)
    return LocalStorage(settings.bucket_dir), settings


def _holder_bytes(**changes) -> bytes:
    holder = {
        "run_id": "other",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": 0.0,
        "started": time.time(),
        "refreshed": time.time(),
    }
    import psutil

    holder["pid_started"] = psutil.Process(holder["pid"]).create_time()
    holder.update(changes)
    return json.dumps(holder).encode()


def test_a_second_run_is_refused_while_the_first_holds_the_lock(bucket):
    storage, settings = bucket
    first = PipelineLock(storage, settings, "run-1")
    first.acquire()
    with pytest.raises(LockBusy) as busy:
        PipelineLock(storage, settings, "run-2").acquire()
    assert busy.value.holder.run_id == "run-1"
    assert "run-1" in str(busy.value)
    first.release()
    assert not storage.exists("pipeline/lock")
    with PipelineLock(storage, settings, "run-2") as second:
        assert LockHolder.from_bytes(storage.get_bytes("pipeline/lock")).run_id == "run-2"
        assert second.holder.pid == os.getpid()
    assert not storage.exists("pipeline/lock")


def test_the_lock_names_its_holder(bucket):
    storage, settings = bucket
    with PipelineLock(storage, settings, "run-1"):
        holder = json.loads(storage.get_bytes("pipeline/lock"))
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid() and holder["run_id"] == "run-1"
    assert holder["started"] <= holder["refreshed"] <= time.time()


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_warning(bucket, caplog):
    storage, settings = bucket
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.put_bytes("pipeline/lock", _holder_bytes(run_id="crashed", pid=int(gone.stdout)))
    with caplog.at_level(logging.WARNING, logger="distracted_driver.pipeline.lock"):
        PipelineLock(storage, settings, "run-2").acquire()
    assert LockHolder.from_bytes(storage.get_bytes("pipeline/lock")).run_id == "run-2"
    assert "taking over a stale pipeline lock of run crashed" in caplog.text and "is gone" in caplog.text


def test_a_lock_without_progress_for_longer_than_the_max_age_is_taken_over(bucket, caplog):
    storage, settings = bucket
    old = time.time() - 3600
    storage.put_bytes("pipeline/lock", _holder_bytes(run_id="stuck", host="another-host", started=old, refreshed=old))
    with pytest.raises(LockBusy):
        PipelineLock(storage, settings, "run-2", max_age_seconds=7200).acquire()
    with caplog.at_level(logging.WARNING, logger="distracted_driver.pipeline.lock"):
        PipelineLock(storage, settings, "run-3", max_age_seconds=600).acquire()
    assert LockHolder.from_bytes(storage.get_bytes("pipeline/lock")).run_id == "run-3"
    assert "no progress for" in caplog.text


def test_a_reused_pid_does_not_keep_a_stale_lock(bucket):
    storage, settings = bucket
    storage.put_bytes("pipeline/lock", _holder_bytes(run_id="before-reboot", pid=os.getpid(), pid_started=1.0))
    PipelineLock(storage, settings, "run-2").acquire()
    assert LockHolder.from_bytes(storage.get_bytes("pipeline/lock")).run_id == "run-2"


def test_refresh_keeps_a_long_run_from_looking_stale_and_release_spares_a_new_holder(bucket):
    storage, settings = bucket
    lock = PipelineLock(storage, settings, "run-1", max_age_seconds=600)
    lock.acquire()
    before = lock.holder.refreshed
    lock.refresh(run_id="run-0")
    current = LockHolder.from_bytes(storage.get_bytes("pipeline/lock"))
    assert current.refreshed >= before and current.run_id == "run-0"
    # Someone took the lock over meanwhile: our release must leave theirs alone.
    storage.put_bytes("pipeline/lock", _holder_bytes(run_id="newcomer"))
    lock.release()
    assert LockHolder.from_bytes(storage.get_bytes("pipeline/lock")).run_id == "newcomer"


def _contend(bucket_dir: str, run_id: str, barrier, losers, results) -> None:
    settings = Settings(root=bucket_dir, bucket_dir=bucket_dir)
    lock = PipelineLock(LocalStorage(bucket_dir), settings, run_id)
    barrier.wait()
    try:
        lock.acquire()
    except LockBusy:
        results.put((run_id, False))
        losers.release()
        return
    results.put((run_id, True))
    for _ in range(barrier.parties - 1):  # hold it until every other run has tried
        if not losers.acquire(timeout=30):
            break
    lock.release()


def test_of_runs_starting_at_the_same_moment_exactly_one_gets_the_lock(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, losers, results = context.Barrier(4), context.Semaphore(0), context.Queue()
    workers = [
        context.Process(target=_contend, args=(str(tmp_path), f"run-{i}", barrier, losers, results)) for i in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    outcomes = [results.get(timeout=5) for _ in workers]
    assert sum(won for _, won in outcomes) == 1
    assert not (tmp_path / "pipeline" / "lock").exists()
