"""One pipeline run: every stage in order, each skipped when its inputs are unchanged.

``run_pipeline(settings, options)`` takes the bucket lock, closes what a
killed run left open (its record, its training job), opens a new run record
and walks the stages of ``pipeline.stages``. With ``--resume`` the new record
continues the latest interrupted or failed run: it takes that run's options
and the stages it finished whose inputs and outputs still hold. For each
stage it

1. asks whether the stage is needed at all in this run (e.g. no smoke test
   when nothing was deployed);
2. hashes the stage's inputs and looks the hash up in the stage cache; when a
   finished stage had the same inputs and its outputs are still in place, the
   outputs are reused and the stage's work is not done again;
3. otherwise marks the stage running, saves the record, does the work, and
   saves the record and the cache entry.

The run ends with one outcome (see ``pipeline.outcomes``). Nothing here
imports torch or starts a server: stages import what they need when they run,
so a run with nothing to do takes about a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from distracted_driver.config import Settings
from distracted_driver.pipeline import outcomes
from distracted_driver.pipeline.context import RunContext, StageFailed, Stop
from distracted_driver.pipeline.lock import DEFAULT_MAX_AGE_SECONDS, LockBusy, PipelineLock
from distracted_driver.pipeline.options import RunOptions
from distracted_driver.pipeline.records import (
    DONE,
    FAILED,
    FINISHED,
    PENDING,
    REUSED,
    RUNNING,
    SKIPPED,
    RunRecord,
    RunStore,
    StageRecord,
    new_run_id,
    now_iso,
)
from distracted_driver.pipeline.stages import PIPELINE
from distracted_driver.storage import Storage, open_storage
from distracted_driver.train.runner import close_orphaned_jobs

logger = logging.getLogger(__name__)


class Interrupted(BaseException):
    """SIGTERM: unwind like Ctrl-C so the record and the lock are settled."""


class ResumeConflict(ValueError):
    """``--resume`` was given options other than those of the run it would continue."""


def run_pipeline(
    settings: Settings,
    options: RunOptions | None = None,
    *,
    storage: Storage | None = None,
    log: Callable[[str], None] | None = None,
    stream: TextIO | None = sys.stderr,
    progress: bool = True,
) -> RunRecord:
    """Run the pipeline once (or continue an interrupted run); the returned record carries the outcome and exit code.

    Raises ``ResumeConflict`` (nothing recorded) when ``--resume`` comes with options of its own.
    """
    options = options or RunOptions()
    storage = storage or open_storage(settings)
    log = log or _print_progress
    store = RunStore(storage, settings)
    record = RunRecord(new_run_id(), settings.backend, options.to_dict())
    lock = PipelineLock(storage, settings, record.run_id, options.lock_max_age_seconds or DEFAULT_MAX_AGE_SECONDS)
    with sigterm_as_interrupt():
        try:
            lock.acquire()
        except LockBusy as busy:
            record.outcome, record.reason, record.finished = outcomes.failed("lock"), str(busy), now_iso()
            return record  # never started: no record in the bucket
        opened = False
        try:
            resumed = _begin(store, settings, storage, record, options, log)
            store.save(record)
            opened = True
            lock.refresh(run_id=record.run_id)
            context = RunContext(
                settings, storage, store, RunOptions.from_dict(record.options), record, log, stream, progress, resumed
            )
            _walk(context, PIPELINE, lock)
        except (Interrupted, KeyboardInterrupt):  # between stages: the record says how far it got
            record.outcome = record.outcome or outcomes.failed(_current_stage(record))
            record.reason = record.reason or "interrupted"
        finally:
            if opened:
                record.finished = now_iso()
                store.save(record)
            lock.release()
    return record


def _current_stage(record: RunRecord) -> str:
    """The stage a run stopped in: the one running, else the first not finished."""
    for stage in record.stages:
        if stage.status not in FINISHED:
            return stage.name
    return record.stages[-1].name


def _begin(
    store: RunStore, settings: Settings, storage: Storage, record: RunRecord, options: RunOptions, log
) -> RunRecord | None:
    """With the lock held: close what a killed run left open; with ``resume``, the run to continue (else None).

    A record without an outcome belongs to a run that is gone (the lock is ours), and a training job
    InProgress whose runner is gone was killed with it: both are closed, with the reason, before
    anything else. ``record`` gets the resumed run's options and its id in ``resumes``.
    """
    latest = store.latest()
    if latest is not None and not latest.outcome:
        _close_killed_run(store, latest, record.run_id)
        log(f"run {latest.run_id} was killed: recorded as {latest.outcome}")
    if settings.backend == "local":
        for job, reason in close_orphaned_jobs(storage, settings, closed_by=f"pipeline run {record.run_id}"):
            log(f"training job {job}: recorded as Stopped ({reason})")
    if not options.resume:
        return None
    if latest is None or not latest.outcome.startswith(outcomes.FAILED_PREFIX):
        what = f"the latest run {latest.run_id} ended {latest.outcome}" if latest else "no run recorded"
        log(f"nothing to resume ({what}); starting run {record.run_id}")
        return None
    conflicts = _conflicting_options(options, latest.options)
    if conflicts:
        raise ResumeConflict(
            f"--resume continues run {latest.run_id} with the options it was started with, "
            f"and these differ: {'; '.join(conflicts)}. Drop them, or start a new run without --resume"
        )
    record.options = {**latest.options, "resume": True}
    record.resumes = latest.run_id
    log(f"resuming run {latest.run_id} ({latest.outcome}: {latest.reason}) with its options, as run {record.run_id}")
    return latest


def _close_killed_run(store: RunStore, killed: RunRecord, closed_by: str) -> None:
    running = next((s for s in killed.stages if s.status == RUNNING), None)
    killed.outcome = outcomes.failed(running.name if running else _current_stage(killed))
    killed.reason = f"interrupted: its process (pid {killed.pid} on {killed.host}) is gone; closed by run {closed_by}"
    if running:
        running.status, running.reason = FAILED, "interrupted: its process is gone"
    killed.finished = now_iso()
    store.save(killed)


# Options that only say how this process runs, not what the run does.
_OPERATIONAL_OPTIONS = ("resume", "lock_max_age_seconds")


def _conflicting_options(given: RunOptions, recorded: dict) -> list[str]:
    """The options set (away from their defaults) in ``given`` that differ from the recorded run's."""
    defaults = RunOptions().to_dict()
    return [
        f"{name} {value!r} (the run had {recorded.get(name, defaults[name])!r})"
        for name, value in given.to_dict().items()
        if name not in _OPERATIONAL_OPTIONS and value != defaults[name] and value != recorded.get(name, defaults[name])
    ]


def _walk(context: RunContext, pipeline, lock: PipelineLock) -> None:
    record = context.record
    for stage in pipeline:
        stage_record = record.stage(stage.name)
        try:
            stop = _advance(context, stage, stage_record)
        except (Exception, Interrupted, KeyboardInterrupt) as error:
            if not isinstance(error, (StageFailed, Interrupted, KeyboardInterrupt)):
                logger.exception("stage %s failed unexpectedly", stage.name)  # a bug: keep its traceback
            reason = _reason(error)
            stage_record.status, stage_record.reason = FAILED, reason
            record.outcome, record.reason = outcomes.failed(stage.name), f"{stage.name}: {reason}"
            context.log(f"{stage.name}: failed: {reason}")
            return
        finally:
            context.store.save(record)
            lock.refresh()
        context.outputs[stage.name] = stage_record.outputs
        if stop is not None:
            record.outcome, record.reason = stop.outcome, stop.reason
            return
    record.outcome, record.reason = _conclude(context)


def _advance(context: RunContext, stage, stage_record: StageRecord) -> Stop | None:
    """Bring one stage to a finished state; return a Stop when the run must end here."""
    start = time.perf_counter()
    if _carry_over(context, stage, stage_record):
        stage_record.seconds = round(time.perf_counter() - start, 3)
        return stage.verdict(context, stage_record)
    why_not = stage.not_needed(context)
    if why_not:
        stage_record.status, stage_record.reason = SKIPPED, why_not
        stage_record.inputs, stage_record.input_hash, stage_record.outputs = {}, "", {}
        stage_record.seconds = round(time.perf_counter() - start, 3)
        return stage.verdict(context, stage_record)
    inputs = stage.inputs(context)
    input_hash = StageRecord.hash_inputs(inputs)
    stage_record.inputs, stage_record.input_hash, stage_record.reason = inputs, input_hash, ""
    entry = context.reusable(stage)
    if entry is not None:
        stage_record.status, stage_record.outputs = REUSED, entry["outputs"]
        stage_record.source_run = entry["run_id"]
        stage_record.reason = f"inputs unchanged since run {entry['run_id']}"
        stage_record.seconds = round(time.perf_counter() - start, 3)
        return stage.verdict(context, stage_record)
    stage_record.status, stage_record.started, stage_record.source_run = RUNNING, now_iso(), ""
    stage_record.attempts += 1
    context.store.save(context.record)
    context.log(f"{stage.name}: running")
    try:
        stage_record.outputs = stage.run(context, stage_record) or {}
    finally:
        stage_record.seconds = round(time.perf_counter() - start, 3)
    stage_record.status = DONE
    if stage.cacheable(stage_record.outputs):
        context.store.remember(stage_record, context.record.run_id)
    context.log(f"{stage.name}: done in {stage_record.seconds:.1f} s{_summary(stage_record)}")
    return stage.verdict(context, stage_record)


def _carry_over(context: RunContext, stage, stage_record: StageRecord) -> bool:
    """Take over what the resumed run finished in this stage, when its inputs and outputs still hold."""
    previous = context.resumed.stage(stage.name) if context.resumed else None
    if previous is None or previous.status not in (DONE, REUSED):
        return False
    if not (
        StageRecord.hash_inputs(stage.inputs(context)) == previous.input_hash
        and stage.still_valid(context, previous.outputs)
    ):
        return False
    stage_record.status, stage_record.source_run = REUSED, previous.source_run or context.resumed.run_id
    stage_record.inputs, stage_record.input_hash, stage_record.outputs = (
        previous.inputs,
        previous.input_hash,
        previous.outputs,
    )
    stage_record.reason = f"finished by run {context.resumed.run_id}, which this run resumes"
    context.carried[stage.name] = previous
    return True


def _conclude(context: RunContext) -> tuple[str, str]:
    record = context.record

    def done(name: str) -> bool:  # by this run, or by the run it resumes
        carried = context.carried.get(name)
        return record.stage(name).status == DONE or (carried is not None and carried.status == DONE)

    version = record.model_version
    if done("deploy"):
        return outcomes.DEPLOYED, f"model {version} is live"
    redone = [s.name for s in record.stages if done(s.name)]
    if not redone:
        return outcomes.NOTHING_TO_DO, f"no input changed; model {version} is live"
    return outcomes.NOTHING_TO_DO, f"model {version} is live; redid {', '.join(redone)} with the same result"


def _summary(stage_record: StageRecord) -> str:
    note = stage_record.outputs.get("summary")
    return f": {note}" if note else ""


def _reason(error: BaseException) -> str:
    if isinstance(error, (Interrupted, KeyboardInterrupt)):
        return "interrupted"
    text = str(error) or type(error).__name__
    return text if isinstance(error, StageFailed) else f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Let ``kill`` (SIGTERM) unwind the run so its record says where it stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- reading records for people ------------------------------------------------------


def summary_line(record: RunRecord) -> str:
    """One line: outcome, reason (which names the model), run and wall time."""
    return f"{record.outcome}: {record.reason} (run {record.run_id}, {record.total_seconds:.1f} s)"


def format_stages(record: RunRecord) -> str:
    lines = [f"{'stage':<12}{'status':<9}{'seconds':>9}  note"]
    for stage in record.stages:
        note = stage.reason or (stage.outputs.get("summary", "") if stage.outputs else "")
        lines.append(f"{stage.name:<12}{stage.status:<9}{stage.seconds:>9.2f}  {note}")
    return "\n".join(lines)


def print_summary(record: RunRecord, file=None) -> None:
    """The run's result as people read it: one line when there was nothing to do, else a stage table too."""
    file = file or sys.stdout
    if record.outcome != outcomes.NOTHING_TO_DO and any(s.status != PENDING for s in record.stages):
        print(format_stages(record), file=file)
    print(summary_line(record), file=file)


def history_text(records: list[RunRecord], as_json: bool = False) -> str:
    """``inv pipeline.history``: the runs as JSON, or as ``format_history``'s table."""
    return json.dumps([r.to_dict() for r in records], indent=2) if as_json else format_history(records)


def format_history(records: list[RunRecord]) -> str:
    """Runs oldest first: outcome, model, wall time and reason, then each stage's status and seconds."""
    if not records:
        return "no pipeline run recorded yet (inv pipeline.run)"
    lines = []
    for record in records:
        outcome = record.outcome or "(unfinished)"
        resumes = f"(resumes {record.resumes}) " if record.resumes else ""
        lines.append(
            f"{record.run_id}  {outcome:<18} {record.model_version or '-':<26} "
            f"{record.total_seconds:>8.1f} s  {resumes}{record.reason}"
        )
        stages = [f"{s.name} {s.status} {s.seconds:.1f}s" for s in record.stages if s.status != PENDING]
        lines.append(f"    {' · '.join(stages)}")
    return "\n".join(lines)
