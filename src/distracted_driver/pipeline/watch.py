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
from distracted_driver.pipeline.run import sigterm_as_interrupt
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
        value = getattr(settings, field.name)
        if value is None:  # unset (capture_percent): the child's default, not the text "None"
            env.pop(f"DD_{field.name.upper()}", None)
        else:
            env[f"DD_{field.name.upper()}"] = str(value)
    return env


def watch(
    settings: Settings,
    options: RunOptions | None = None,
    interval: float = 10.0,
    max_runs: int | None = None,
    timeout: float | None = None,
) -> list[WatchedRun]:
    """Poll until ``max_runs`` runs were started or ``timeout`` seconds passed; return what ran."""
    watcher = Watcher(settings, options or RunOptions(), interval, max_runs, timeout)
    with sigterm_as_interrupt():  # stopping the watcher stops its run too
        watcher.loop()
    return watcher.runs


class Watcher:
    def __init__(
        self, settings: Settings, options: RunOptions, interval: float, max_runs: int | None, timeout: float | None
    ):
        self.settings, self.options, self.interval = settings, options, interval
        self.max_runs, self.timeout = max_runs, timeout
        self.deadline = time.monotonic() + timeout if timeout else None
        self.storage = open_storage(settings)
        self.store = RunStore(self.storage, settings)
        self.prefix = manifest_prefix(settings)
        self.seen = set(self.storage.list_keys(self.prefix))
        self.pending = _unconsumed(self.store, sorted(self.seen))
        self.runs: list[WatchedRun] = []
        log.info(
            "watching %s every %g s (%d manifests there%s)",
            self.storage.uri(self.prefix),
            interval,
            len(self.seen),
            f"; newest {self.pending[0]} not yet run" if self.pending else "",
        )

    def loop(self) -> None:
        while not self._done():
            present = set(self.storage.list_keys(self.prefix))
            new = sorted((present - self.seen) | set(self.pending))
            if new:
                self._start_run(new, present)
            else:
                log.debug("no new manifest")
            _sleep(self.interval, self.deadline)

    def _done(self) -> bool:
        if self.max_runs is not None and len(self.runs) >= self.max_runs:
            log.info("stopping: %d run(s) started, the maximum", len(self.runs))
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            log.info("stopping: timeout of %g s reached", self.timeout)
            return True
        return False

    def _start_run(self, new: list[str], present: set[str]) -> None:
        log.info("new manifest(s) %s: starting a pipeline run", ", ".join(new))
        run = _run_child(self.settings, self.options, self.store, new, self.deadline)
        if run.outcome == outcomes.failed("lock"):
            log.info("another pipeline run holds the lock; trying again in %g s", self.interval)
            self.pending = new
        elif not run.run_id:
            log.info("the run was stopped before it began (exit %d)", run.exit_code)
            self.pending = new
        else:
            log.info("run %s ended %s (exit %d)", run.run_id, run.outcome, run.exit_code)
            self.runs.append(run)
            self.seen |= present  # manifests that landed during the run are new at the next poll
            self.pending = []


def _unconsumed(store: RunStore, manifests: list[str]) -> list[str]:
    """The newest manifest when no recorded run has read it (data landed while nobody watched)."""
    if not manifests:
        return []
    latest = store.latest()
    consumed = latest.raw_manifest if latest else None
    return [] if consumed == Path(manifests[-1]).stem else [manifests[-1]]


def _run_child(
    settings: Settings, options: RunOptions, store: RunStore, manifests: list[str], deadline: float | None
) -> WatchedRun:
    before = set(store.run_ids())
    command = [sys.executable, "-m", "distracted_driver.pipeline", "run", "--options", json.dumps(options.to_dict())]
    child = subprocess.Popen(command, env=settings_environment(settings), cwd=settings.root)
    try:
        code = child.wait(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        log.warning("timeout reached during run: stopping it (SIGTERM)")
        code = _stop(child)
    except BaseException:  # the watcher itself is being stopped: so is its run
        log.warning("watcher stopped during run: stopping it (SIGTERM)")
        _stop(child)
        raise
    started = sorted(set(store.run_ids()) - before)
    record = store.load(started[-1]) if started else (store.latest() if options.resume else None)
    if record is not None and record.outcome:
        return WatchedRun(manifests, code, record.outcome, record.run_id)
    outcome = outcomes.failed("lock") if code == outcomes.exit_code(outcomes.failed("lock")) else f"exit {code}"
    return WatchedRun(manifests, code, outcome, record.run_id if record else "")


def _stop(child: subprocess.Popen) -> int:
    """SIGTERM (the run records where it stopped), then SIGKILL after a grace period."""
    child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def _sleep(interval: float, deadline: float | None) -> None:
    remaining = interval if deadline is None else min(interval, deadline - time.monotonic())
    if remaining > 0:
        time.sleep(remaining)
