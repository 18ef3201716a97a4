"""The local trigger: poll the bucket's raw-data manifests, start a pipeline run when a new one lands.

In AWS the same job is done by an S3 event notification and a trigger Lambda
that starts CodeBuild; here a bounded polling loop does it. Each run is a
child process (``python -m distracted_driver.pipeline run``), so the watcher
stays small, can stop a run that outlives ``timeout``, and two runs never
overlap: the watcher waits for its child, and the bucket lock keeps out a run
started by hand (the watcher then retries at the next poll).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distracted_driver.config import Settings
from distracted_driver.pipeline import outcomes
from distracted_driver.pipeline.options import RunOptions
from distracted_driver.pipeline.records import RunStore
from distracted_driver.storage import open_storage

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0  # after SIGTERM, time for a run to record where it stopped


@dataclass
class WatchedRun:
    manifests: list[str]  # the new manifest keys that started it
    exit_code: int
    outcome: str
    run_id: str


def manifest_prefix(settings: Settings) -> str:
    return f"{settings.raw_prefix.strip('/')}/manifests/"


def settings_environment(settings: Settings) -> dict[str, str]:
    """``DD_*`` variables that make ``Settings.from_env()`` in a child equal to ``settings``."""
    env = dict(os.environ)
    for field in dataclasses.fields(settings):
        env[f"DD_{field.name.upper()}"] = str(getattr(settings, field.name))
    return env


def watch(settings: Settings, options: RunOptions | None = None, interval: float = 10.0,
          max_runs: int | None = None, timeout: float | None = None) -> list[WatchedRun]:
    """Poll until ``max_runs`` runs were started or ``timeout`` seconds passed; return what ran."""
    options = options or RunOptions()
    storage = open_storage(settings)
    store = RunStore(storage, settings)
    prefix = manifest_prefix(settings)
    deadline = time.monotonic() + timeout if timeout else None
    seen = set(storage.list_keys(prefix))
    pending = _unconsumed(store, sorted(seen))
    log.info("watching %s every %.0f s (%d manifests there%s)", storage.uri(prefix), interval, len(seen),
             f"; newest {pending[0]} not yet run" if pending else "")
    runs: list[WatchedRun] = []
    while True:
        if max_runs is not None and len(runs) >= max_runs:
            log.info("stopping: %d run(s) started, the maximum", len(runs))
            break
        if deadline is not None and time.monotonic() >= deadline:
            log.info("stopping: timeout of %.0f s reached", timeout)
            break
        present = set(storage.list_keys(prefix))
        new = sorted((present - seen) | set(pending))
        if new:
            log.info("new manifest(s) %s: starting a pipeline run", ", ".join(new))
            run = _run_child(settings, options, store, new, deadline)
            if run.outcome == outcomes.failed("lock"):
                log.info("another pipeline run holds the lock; trying again in %.0f s", interval)
                pending = new
            else:
                log.info("run %s ended %s (exit %d)", run.run_id or "?", run.outcome, run.exit_code)
                runs.append(run)
                seen |= present
                pending = []
        else:
            log.debug("no new manifest")
        _sleep(interval, deadline)
    return runs


def _unconsumed(store: RunStore, manifests: list[str]) -> list[str]:
    """The newest manifest when no recorded run has read it (data landed while nobody watched)."""
    if not manifests:
        return []
    latest = store.latest()
    consumed = latest.raw_manifest if latest else None
    return [] if consumed == Path(manifests[-1]).stem else [manifests[-1]]


def _run_child(settings: Settings, options: RunOptions, store: RunStore, manifests: list[str],
               deadline: float | None) -> WatchedRun:
    before = set(store.run_ids())
    command = [sys.executable, "-m", "distracted_driver.pipeline", "run", "--options", json.dumps(options.to_dict())]
    child = subprocess.Popen(command, env=settings_environment(settings), cwd=settings.root)
    try:
        code = child.wait(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        log.warning("timeout reached during run: stopping it (SIGTERM)")
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
    finally:
        if child.poll() is None:  # our own failure while waiting: leave nothing running
            child.kill()
            child.wait()
    started = sorted(set(store.run_ids()) - before)
    record = store.load(started[-1]) if started else store.latest()
    if record is not None and record.outcome:
        return WatchedRun(manifests, code, record.outcome, record.run_id)
    outcome = outcomes.failed("lock") if code == outcomes.exit_code(outcomes.failed("lock")) else f"exit {code}"
    return WatchedRun(manifests, code, outcome, record.run_id if record else "")


def _sleep(interval: float, deadline: float | None) -> None:
    remaining = interval if deadline is None else min(interval, deadline - time.monotonic())
    if remaining > 0:
        time.sleep(remaining)
