"""invoke tasks: parse options, call the library. No logic lives here.

Every task takes ``--backend local|aws`` where it touches the bucket or the
endpoint (default ``local``; ``DD_BACKEND`` overrides). A task's help is one
``flag: text`` line per flag. How an expected failure ends (one line, a
documented exit status) is decided for every task by ``distracted_driver.cli``.
The imports inside task bodies load numpy, OpenCV, aiohttp, boto3 or Locust:
at the top they would make ``inv --list`` take 3 s instead of half a second.
"""

from __future__ import annotations

import functools
import inspect
import json as jsonlib
import logging
import sys
from pathlib import Path

from invoke import Argument, Collection, Task
from invoke import task as invoke_task
from invoke.exceptions import Exit

from distracted_driver.cli import bad_value, explain, help_table, missing_arguments
from distracted_driver.config import Settings, parse_percent
from distracted_driver.data.split import split_dataset
from distracted_driver.hosting import AlarmThresholds, ScalingPolicy, TrafficRouting, open_hosting
from distracted_driver.pipeline.options import FLAGS, options_from_flags, parse_key_values
from distracted_driver.pipeline.records import RunStore
from distracted_driver.storage import open_storage
from distracted_driver.train import open_trainer


class _Task(Task):
    """Every task: flags only (so no argument swallows ``--help``), and an expected failure ends in one line
    with the exit status ``distracted_driver.cli`` documents; a bug keeps its traceback."""

    def __init__(self, body, *args, help=None, **kwargs):  # noqa: A002 - invoke's keyword
        kwargs.setdefault("positional", ())
        # named after the function, less its collection: model_set_live is model.set-live
        kwargs.setdefault("name", body.__name__.partition("_")[2].replace("_", "-") or body.__name__)
        super().__init__(body, *args, help=help_table(body, help), **kwargs)

    def get_arguments(self, ignore_unknown_help=None):
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            if argument.kind in (int, float):
                argument.__class__ = _NumberArgument
            # -h stays help: invoke would hand it to a flag whose other letters are taken (data.sample's --shift)
            argument.names = tuple(name for name in argument.names if name != "h")
        return arguments

    def __call__(self, *args, **kwargs):
        failure = missing_arguments(self.body, kwargs)
        if failure is None:
            try:
                return super().__call__(*args, **kwargs)
            except Exit:
                raise
            except BaseException as error:
                failure = explain(error, kwargs)
                if failure is None:
                    raise
        raise Exit(failure.message, code=failure.code)


class _NumberArgument(Argument):
    """A flag whose default is a number: invoke converts its value, and would raise a bare ValueError."""

    def set_value(self, value, cast=True):
        try:
            super().set_value(value, cast)
        except ValueError:
            failure = bad_value(f"--{self.names[0]}", value, self.kind)
            raise Exit(failure.message, code=failure.code) from None


task = functools.partial(invoke_task, klass=_Task)


def _settings(backend: str | None = None) -> Settings:
    return Settings.from_env(backend=backend)


def _optional(value, kind):
    """A flag without a numeric default arrives as text (or None, or "" for "not given")."""
    return None if value is None or value == "" else kind(value)


def _given(kind, **values):
    """The flags that were given, converted: the library's defaults stay for the rest."""
    return {name: kind(value) for name, value in values.items() if value is not None and value != ""}


def _lines(lines):
    print("\n".join(lines))


BUCKET = "backend: local or aws bucket (default local)"
ENDPOINT = "backend: local (default) or aws"
LOCAL_ONLY = "backend: local only"

# --- data -----------------------------------------------------------------------------------------------------


@task(
    help="""
    out: directory to write the Kaggle layout into (default .work/sample, replaced on every run)
    drivers: number of drivers (subjects) to draw (default 26)
    images_per_class_driver: images of each class for each driver (default 3)
    test_images: unlabelled images under imgs/test (default 40)
    seed: random seed; the same seed gives the same bytes (default 0)
    first_driver: number of the first subject, e.g. 90 for p090, p091, ... (default: Kaggle's p002..p081)
    overwrite: replace OUT if it already holds a sample (never a directory that does not)
    workers: processes drawing in parallel, the same bytes whatever the number (default 1; 0: all cores)
    shift: draw every driver under a condition training never saw: night, angle (another camera mount) or
      cabin (another car); for drift tests
"""
)
def data_sample(
    c,
    out=None,
    drivers=26,
    images_per_class_driver=3,
    test_images=40,
    seed=0,
    first_driver=None,
    overwrite=False,
    workers=1,
    shift=None,
):
    """Draw synthetic cabin images in the exact State Farm layout (imgs/, driver_imgs_list.csv, ...)."""
    from distracted_driver.data.channels import WorkDirs
    from distracted_driver.data.sample import generate_sample

    print(
        generate_sample(
            out or WorkDirs.of(_settings()).sample,
            drivers=drivers,
            seed=seed,
            workers=workers,
            images_per_class_driver=images_per_class_driver,
            test_images=test_images,
            first_driver=_optional(first_driver, int),
            overwrite=overwrite or not out,
            shift=shift or None,
        )
    )


@task(
    help=f"""
    from: directory holding a Kaggle-layout batch (imgs/train/cN/*.jpg + driver_imgs_list.csv)
    {BUCKET}
"""
)
def data_add(c, from_, backend=None):
    """Add a labelled batch to the bucket's raw data and write a new data manifest (exit 2 if anything was refused
    or, in a batch exported by monitor.export, rows are not reviewed yet)."""
    from distracted_driver.data.ingest import add_data

    settings = _settings(backend)
    report = add_data(open_storage(settings), settings, from_)
    print(report)
    if report.refused or report.unreviewed:
        left_out = [f"{len(report.refused)} image(s) refused (listed above)"] if report.refused else []
        left_out += [f"{len(report.unreviewed)} row(s) not reviewed"] if report.unreviewed else []
        raise Exit(" and ".join(left_out), code=2)


@task(
    help="""
    root: Kaggle-layout root (driver_imgs_list.csv + imgs/train/cN/) or a plain cN/*.jpg tree (default .work/sample)
    out: where train.lst, validation.lst and split.json go (default .work/data/split)
    val_drivers: put this many whole drivers in validation
    val_fraction: put whole drivers holding about this share of the images in validation (default 0.2)
    fold: use fold K (0-based) of a grouped K-fold as validation
    folds: number of folds for --fold (default 5)
    seed: random seed for choosing drivers and shuffling train (default 0)
"""
)
def data_split(c, root=None, out=None, val_drivers=None, val_fraction=None, fold=None, folds=5, seed=0):
    """Split the images into train/validation by driver (no driver on both sides) and write MXNet .lst files."""
    from distracted_driver.data.channels import WorkDirs

    dirs = WorkDirs.of(_settings())
    print(
        split_dataset(
            root or dirs.sample,
            out or dirs.lists,
            val_drivers=_optional(val_drivers, int),
            val_fraction=_optional(val_fraction, float),
            fold=_optional(fold, int),
            folds=folds,
            seed=seed,
        ).summary()
    )


@task(
    help="""
    lists: directory with train.lst / validation.lst (default .work/data/split)
    out: channel directory to write (default .work/data/converted)
    images: image root the .lst paths are relative to (default: from the split's split.json)
    resize: resize the shorter edge to this many pixels, 0 keeps the size (default 256)
    center_crop: crop the centred square first
    quality: JPEG quality 1-100 (default 95) or PNG compression 0-9 (default 3)
    encoding: .jpg or .png (default .jpg)
    pass_through: store the source files' bytes unchanged (decoded only to check them; no resize)
    workers: worker processes (default: all cores)
    interpolation: linear (im2rec's) or area (default linear)
"""
)
def data_convert(
    c,
    lists=None,
    out=None,
    images=None,
    resize=256,
    center_crop=False,
    quality=None,
    encoding=".jpg",
    pass_through=False,
    workers=0,
    interpolation="linear",
):
    """Convert the .lst files to RecordIO channels (.rec + .idx + .lst) and write manifest.json (im2rec's job)."""
    from distracted_driver.data.channels import WorkDirs
    from distracted_driver.data.convert import ConvertOptions, convert_lists

    dirs = WorkDirs.of(_settings())
    options = ConvertOptions(
        resize=resize,
        center_crop=center_crop,
        quality=_optional(quality, int),
        encoding=encoding,
        pass_through=pass_through,
        interpolation=interpolation,
    )
    print(
        convert_lists(
            lists or dirs.lists, out or dirs.channels, options, workers=workers or None, image_root=images
        ).summary()
    )


@task(
    help=f"""
    directory: channel directory to upload (default .work/data/converted)
    prefix: key prefix in the bucket (default data)
    {BUCKET}
"""
)
def data_upload(c, directory=None, prefix=None, backend=None):
    """Copy the channels and their manifest to the bucket (<prefix>/train/, <prefix>/validation/), skipping unchanged files."""  # noqa: E501 - the first line is inv --list's summary
    from distracted_driver.data.channels import WorkDirs, upload_channels

    settings = _settings(backend)
    storage, prefix = open_storage(settings), prefix or settings.data_prefix
    report = upload_channels(storage, directory or WorkDirs.of(settings).channels, prefix)
    print(f"{report} -> {storage.uri(prefix)}")


# --- train and model ------------------------------------------------------------------------------------------


@task(
    help="""
    epochs: maximum epochs (default 40; early stopping may end sooner)
    learning_rate: AdamW learning rate (default 3e-3 frozen, 3e-4 fine-tuning)
    mini_batch_size: images per step (default 32)
    image_size: network input size (default 224)
    freeze_backbone: frozen backbone: features once, head trained (default; --no-freeze-backbone fine-tunes all)
    augmentation: true/false (default: on when fine-tuning; frozen features are never augmented)
    seed: random seed (default 0)
    patience: early stopping: epochs without a better validation log loss (default 5)
    extra: more script flags as key=value,key=value (e.g. dropout=0.3,weight-decay=1e-4)
    resume: name of a job that did not complete: continue it from its last checkpoint
    backend: local (default): a local job; aws: a SageMaker training job
    algorithm: aws only: script (default, scripts/train.py in the PyTorch container) or builtin
        (SageMaker's image-classification algorithm, GPU)
"""
)
def train_run(
    c,
    epochs=40,
    learning_rate=None,
    mini_batch_size=32,
    image_size=224,
    freeze_backbone=True,
    augmentation=None,
    seed=0,
    patience=5,
    extra="",
    resume=None,
    backend=None,
    algorithm="script",
):
    """Run scripts/train.py as a local SageMaker-style job on the bucket's channels; store and register the model."""
    hyperparameters = {
        "epochs": epochs,
        "learning-rate": learning_rate,
        "mini-batch-size": mini_batch_size,
        "image-size": image_size,
        "freeze-backbone": bool(freeze_backbone),
        "augmentation": augmentation,
        "seed": seed,
        "patience": patience,
        **parse_key_values(extra),
    }
    job = open_trainer(_settings(backend), algorithm=algorithm).train(hyperparameters, resume=resume)
    print(f"training job {job} completed")


@task(
    help=f"""
    model: training job name, 'latest' or 'live' (default latest)
    out: report folder (default reports/models/<job>)
    {BUCKET}
"""
)
def train_evaluate(c, model="latest", out=None, backend=None):
    """Re-evaluate a model's ONNX file on the validation channel (ONNX Runtime): metrics.json and PNG plots."""
    from distracted_driver.model.evaluate import evaluate_model, summary_lines

    job, metrics, paths = evaluate_model(_settings(backend), model, out)
    _lines(
        [f"model {job}"]
        + [f"  {line}" for line in summary_lines(metrics)]
        + [f"  {name}: {path}" for name, path in paths.items()]
    )


def _registry(backend):
    from distracted_driver.model.registry import Registry

    settings = _settings(backend)
    return Registry(open_storage(settings), settings)


@task(
    help=f"""
    json: print the registry entries as JSON
    {BUCKET}
"""
)
def model_list(c, json=False, backend=None):
    """List the registered model versions: the precision each serves and both precisions' validation scores; * live."""
    from distracted_driver.model.registry import version_listing

    print(version_listing(_registry(backend), as_json=json))


@task(
    help=f"""
    candidate: training job name to judge, or 'latest' (default)
    tolerance: how much worse than the live model's validation log loss is allowed (default 0.05)
    baseline_fraction: with no live model: must be below this fraction of ln(10) (default 0.5)
    int8_tolerance: the precision rule's tolerance, e.g. 0.01,3% (default: DD_INT8_TOLERANCE, else 0.01,3%)
    json: print the decision as JSON
    {BUCKET}
"""
)
def model_gate(
    c, candidate="latest", tolerance=None, baseline_fraction=None, int8_tolerance=None, json=False, backend=None
):
    """Quality gate: score the candidate's served model on the validation set; exit 1 with the reason if rejected."""
    from distracted_driver.train.gate import judge

    decision = judge(
        _registry(backend),
        candidate,
        int8_tolerance=int8_tolerance,
        **_given(float, tolerance=tolerance, baseline_fraction=baseline_fraction),
    )
    print(jsonlib.dumps(decision.to_dict(), indent=2) if json else "\n".join(decision.report_lines()))
    if not decision.passed:
        raise Exit(code=1)


@task(
    help=f"""
    job: training job name (or 'latest')
    {BUCKET}
"""
)
def model_set_live(c, job="latest", backend=None):
    """Point registry/live.json at a version by hand (deploy does this itself after a swap)."""
    print(f"live model: {_registry(backend).set_live(job, by='inv model.set-live')['job']}")


# --- predict / serve ------------------------------------------------------------------------------------------


@task(
    auto_shortflags=False,
    help="""
    images: directory of JPEG/PNG images to classify (e.g. a Kaggle imgs/test); with --backend aws also
        s3://<bucket>/<transform prefix>/... (a directory is uploaded there first)
    model: training job name, 'latest' (newest trained) or 'live' (deployed); default latest
    out: CSV to write in sample_submission.csv format (default submission.csv)
    batch_size: local: images per ONNX Runtime run (default 8: as fast as 32 on CPUs, a third of the memory)
    workers: local: decode threads (default: all cores); aws: threads checking and moving images (default 16)
    backend: local (this machine) or aws (SageMaker Batch Transform); default local
    instances: aws: instances of the transform job (default 1)
    instance_type: aws: instance type (default: the serving type, or the next size Batch Transform offers)
    max_concurrent: aws: requests in flight to each instance, MaxConcurrentTransforms (default 8)
    max_payload_mb: aws: MaxPayloadInMB, the largest image a request carries (default 6)
""",
)  # auto_shortflags: invoke would give --max-payload-mb the short flag "-" (m, a and x are taken)
def predict_batch(
    c,
    images,
    model="latest",
    out="submission.csv",
    batch_size=8,
    workers=0,
    backend=None,
    instances=1,
    instance_type="",
    max_concurrent=8,
    max_payload_mb=6,
):
    """Classify images with a trained model and write a Kaggle submission CSV (here, or on SageMaker Batch Transform)."""  # noqa: E501 - the first line is inv --list's summary
    from distracted_driver.hosting.batch import BatchOptions
    from distracted_driver.hosting.batch import predict_batch as run

    options = BatchOptions(batch_size, workers, instances, instance_type or None, max_concurrent, max_payload_mb)
    outcome = run(_settings(backend), model, images, out, options)
    _lines(outcome.lines)
    if outcome.error:
        raise Exit(outcome.error, code=1)


@task(
    help=f"""
    model: training job name, 'latest' or 'live' (fetched from the bucket), or an unpacked model directory
    port: port on 127.0.0.1 (default 8080; 0 picks a free one)
    max_batch_size: images per ONNX Runtime run (default 8)
    max_batch_delay_ms: longest wait for a batch to fill (default 5)
    {BUCKET}
"""
)
def serve_run(c, model="latest", port=8080, max_batch_size=8, max_batch_delay_ms=5.0, backend=None):
    """Run one model server in the foreground (SageMaker hosting contract); Ctrl-C drains and stops it."""
    from distracted_driver.model.cache import fetch_artifact
    from distracted_driver.serve import server

    model_dir = Path(model) if Path(model).is_dir() else fetch_artifact(_settings(backend), model).directory
    sys.exit(
        server.main(
            [
                "--model-dir",
                str(model_dir),
                "--port",
                str(port),
                "--max-batch-size",
                str(max_batch_size),
                "--max-batch-delay-ms",
                str(max_batch_delay_ms),
            ]
        )
    )


# --- api ------------------------------------------------------------------------------------------------------


@task(
    help=f"""
    port: port on 127.0.0.1 (default: the last one used, else 8088; 0 picks a free one)
    rate: usage-plan throttle: requests/s per API key (default: last used, else 200)
    burst: usage-plan throttle: burst per API key (default: last used, else 400)
    no_key: accept requests without an API key
    runtime_url: SageMaker Runtime URL to call (default: the local endpoint's, from deploy.status)
    {LOCAL_ONLY}: the gateway fronts the local endpoint
"""
)
def api_up(c, port=None, rate=None, burst=None, no_key=False, runtime_url=None, backend=None):
    """Start the local API Gateway (real Lambda handler in front of the endpoint) as a background daemon."""
    from distracted_driver.gateway import UsagePlan, start_gateway, started_lines
    from distracted_driver.gateway.daemon import saved_plan

    settings = _settings(backend)
    saved = saved_plan(settings)
    plan = UsagePlan(rate=float(rate or saved.rate), burst=int(burst or saved.burst), require_key=not no_key)
    _lines(started_lines(start_gateway(settings, runtime_url=runtime_url, port=_optional(port, int), plan=plan)))


@task(help=LOCAL_ONLY)
def api_down(c, backend=None):
    """Stop the local API Gateway daemon."""
    from distracted_driver.gateway import stop_gateway

    print("API stopped" if stop_gateway(_settings(backend)) else "API was not running")


@task(
    help=f"""
    json: print JSON (running, healthy, problem, url, api_key, endpoint, runtime_url, plan, pid, supervisor)
    {LOCAL_ONLY}
"""
)
def api_status(c, json=False, backend=None):
    """Where the local API is, whether the endpoint behind it serves, and a key to call it with."""
    from distracted_driver.gateway import gateway_status, status_lines

    status = gateway_status(_settings(backend))
    print(jsonlib.dumps(status, indent=2) if json else "\n".join(status_lines(status)))


@task(
    help=f"""
    name: a label for the key (default: cli)
    {LOCAL_ONLY}
"""
)
def api_key(c, name="cli", backend=None):
    """Create a new API key and print it; the running gateway accepts it within a second."""
    from distracted_driver.gateway import create_api_key

    print(create_api_key(_settings(backend), name)["value"])


# --- loadtest -------------------------------------------------------------------------------------------------


@task(
    default=True,
    help="""
    users: concurrent Locust users (default 8, at most 2000)
    spawn_rate: users started per second (default 4)
    run_time: how long, e.g. 20s, 2m (default 20s, at most 1h)
    host: API base URL (default: the local API from api.status), e.g. the AWS stage URL
    api_key: x-api-key to send (default: DD_API_KEY, else the local API's key)
    slo: SLO file (default load_test/slo.toml)
    backend: local or aws settings
""",
)
def loadtest_run(c, users=8, spawn_rate=4.0, run_time="20s", host=None, api_key=None, slo=None, backend=None):
    """Run Locust headless against the API; exit non-zero naming each missed SLO. Reports in reports/loadtest/."""
    from distracted_driver.loadtest import SLO, run_loadtest

    result = run_loadtest(
        _settings(backend), users, spawn_rate, run_time, host, api_key, SLO.load(slo) if slo else None
    )
    _lines(result.report_lines())
    if result.misses:
        raise Exit("SLO missed:\n" + "\n".join(f"  {m}" for m in result.misses), code=1)


@task(
    help="""
    start_users: users in the first step (default 2)
    step_users: users added per step (default 2)
    max_users: stop after this many users (default 32)
    step_time: length of each step (default 15s)
    safety_factor: share of the capacity autoscaling should aim at (default 0.5)
    instances: instances behind the endpoint (default: from deploy.status, else 1)
    host: API base URL (default: the local API)
    api_key: x-api-key to send
    backend: local or aws settings
"""
)
def loadtest_find_capacity(
    c,
    start_users=2,
    step_users=2,
    max_users=32,
    step_time="15s",
    safety_factor=0.5,
    instances=None,
    host=None,
    api_key=None,
    backend=None,
):
    """Ramp users until failures pass 1% or p99 its SLO; report the highest sustainable RPS and autoscaling target."""
    from distracted_driver.loadtest import find_capacity

    _lines(
        find_capacity(
            _settings(backend),
            start_users,
            step_users,
            max_users,
            step_time,
            host,
            api_key,
            instances=_optional(instances, int) or None,
            safety_factor=safety_factor,
        ).report_lines()
    )


# --- deploy ---------------------------------------------------------------------------------------------------


def _hosting(settings):
    return open_hosting(settings, on_event=lambda e: print(f"  [{e['elapsed']:7.2f} s] {e['message']}", flush=True))


def _release(settings, model, routing, alarms, instances, force, capture_percent=None, new_endpoint=False):
    """Deploy MODEL through ``hosting.release``: gate clearance (or --force), blue/green, smoke test, rollback."""
    from distracted_driver.hosting.release import release

    done = release(
        settings,
        _hosting(settings),
        model,
        routing,
        alarms,
        instances=instances,
        force=force,
        capture_percent=parse_percent(capture_percent),
        new_endpoint=new_endpoint,
        by="inv deploy --force",
        log=print,
    )
    _report(done.report_lines(), done.result)


def _report(lines, result):
    _lines(lines)
    if not result.succeeded:
        raise Exit(code=1)


RELEASE = f"""
    model: training job name, 'latest' (default) or 'live'
    capture_percent: share of invocations to capture once the model is live, 0..100 (0: off); default: what the
        endpoint captures now (nothing when new), or DD_CAPTURE_PERCENT
    force: deploy even without a passing gate record (the override is written into the model's entry)
    {ENDPOINT}
"""


@task(
    help=f"""
    instances: model-server instances (default 1)
    {RELEASE}
"""
)
def deploy_create(c, model="latest", instances=1, capture_percent=None, force=False, backend=None):
    """Create the endpoint with a gated model, then smoke-test it; refuses if it exists (use deploy.swap).

    Exit 3 when the model has no passing gate record (inv model.gate) and --force is not given."""
    _release(
        _settings(backend),
        model,
        TrafficRouting(strategy="all-at-once", bake_seconds=0),
        AlarmThresholds(),
        instances,
        force,
        capture_percent,
        new_endpoint=True,
    )


@task(
    help=f"""
    strategy: all-at-once, canary (default) or linear
    canary_percent: canary: share of traffic sent to green first (default 10)
    linear_step_percent: linear: share of traffic moved per step (default 25)
    wait: seconds between traffic steps, alarms watched (default 30)
    bake: seconds with all traffic on green before blue is retired, alarms watched (default 30)
    termination_wait: extra seconds blue is kept after baking (default 0)
    max_execution: roll back when the swap takes longer than this many seconds (default 1800)
    instances: instances for the new fleet (default 1; with autoscaling, blue's current count)
    max_error_rate: roll back when green's error rate (5xx) exceeds this share (default 0.05)
    max_p99_ms: roll back when green's p99 latency exceeds this many ms (default 2000)
    alarm_window: seconds of requests the alarms look back over (default 60)
    {RELEASE}
"""
)
def deploy_swap(
    c,
    model="latest",
    strategy="canary",
    canary_percent=10,
    linear_step_percent=25,
    wait=30.0,
    bake=30.0,
    termination_wait=0.0,
    max_execution=1800.0,
    instances=1,
    max_error_rate=0.05,
    max_p99_ms=2000.0,
    alarm_window=60.0,
    capture_percent=None,
    force=False,
    backend=None,
):
    """Blue/green deploy of a gated model, then a smoke test that must get the gate's answers, else rollback.

    Exit 1 if it was rolled back or failed; exit 3 (nothing deployed) when the model has no passing gate record
    for the current validation set (inv model.gate) and --force is not given."""
    settings = _settings(backend)
    routing = TrafficRouting(
        strategy=strategy,
        canary_percent=canary_percent,
        linear_step_percent=linear_step_percent,
        wait_seconds=wait,
        bake_seconds=bake,
        termination_wait_seconds=termination_wait,
        max_execution_seconds=max_execution,
    )
    alarms = AlarmThresholds(max_error_rate=max_error_rate, max_p99_latency_ms=max_p99_ms, window_seconds=alarm_window)
    print(f"deploying {model} to {settings.endpoint_name} ({strategy})")
    _release(settings, model, routing, alarms, instances, force, capture_percent)


@task(help=ENDPOINT)
def deploy_rollback(c, backend=None):
    """Send traffic back to the previous model: stops a swap in progress, or swaps back to the previous config."""
    result = _hosting(_settings(backend)).rollback()
    _report(result.report_lines(), result)


@task(
    help=f"""
    json: print the whole status as JSON
    {ENDPOINT}
"""
)
def deploy_status(c, json=False, backend=None):
    """Endpoint, variants, instances, live model version, autoscaling and the runtime URL for boto3."""
    from distracted_driver.hosting.report import status_lines

    status = _hosting(_settings(backend)).status()
    print(jsonlib.dumps(status.to_dict(), indent=2, default=str) if json else "\n".join(status_lines(status)))


@task(
    help=f"""
    min: fewest instances (default 1)
    max: most instances (default 4)
    target: target invocations per instance per minute (default 600)
    scale_out_cooldown: seconds after a scale-out before the next one (default 60)
    scale_in_cooldown: seconds after any scaling before a scale-in (default 300)
    window: seconds the invocation rate is averaged over (default 60)
    off: remove the policy instead (instances stay as they are)
    {ENDPOINT}
"""
)
def deploy_autoscale(
    c,
    min_=1,
    max_=4,
    target=600.0,
    scale_out_cooldown=60.0,
    scale_in_cooldown=300.0,
    window=60.0,
    off=False,
    backend=None,
):
    """Target tracking on invocations per instance per minute for the endpoint's variant."""
    settings = _settings(backend)
    policy = None if off else ScalingPolicy(min_, max_, target, scale_out_cooldown, scale_in_cooldown, window)
    _hosting(settings).set_autoscaling(policy)
    print(f"autoscaling of {settings.endpoint_name}/{settings.variant_name}: {policy or 'off'}")


@task(
    help=f"""
    percent: share of invocations to capture from now on, 0..100 (0: off)
    {ENDPOINT}
"""
)
def deploy_capture(c, percent, backend=None):
    """Change the live endpoint's data capture; the files land under the bucket's capture prefix.

    Locally the router samples at once; on AWS a new endpoint config with the new DataCaptureConfig
    goes live (update_endpoint, all at once)."""
    from distracted_driver.hosting.report import capture_text

    settings = _settings(backend)
    capture = _hosting(settings).set_capture(parse_percent(percent, "--percent"))
    print(f"data capture of {settings.endpoint_name}: {capture_text(capture)}")


@task(
    help=f"""
    image: JPEG or PNG to classify
    variant: production variant to target (X-Amzn-SageMaker-Target-Variant)
    {ENDPOINT}
"""
)
def deploy_invoke(c, image, variant=None, backend=None):
    """Classify one image through the endpoint with boto3's sagemaker-runtime client; print the top classes."""
    from distracted_driver.hosting.report import invoke_lines

    _lines(invoke_lines(_hosting(_settings(backend)), image, variant))


@task(help=ENDPOINT)
def deploy_down(c, backend=None):
    """Delete the endpoint and stop the local runtime; no model server of ours keeps running."""
    settings = _settings(backend)
    _hosting(settings).delete()
    print(f"endpoint {settings.endpoint_name} deleted")


# --- pipeline -------------------------------------------------------------------------------------------------


def _with_pipeline_flags(body):
    """Give a pipeline task the flags ``pipeline.options.FLAGS`` declares once (the body takes them as **flags)."""
    own = [p for p in inspect.signature(body).parameters.values() if p.kind is not p.VAR_KEYWORD]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default) for name, (default, _) in FLAGS.items()
    ]
    body.__signature__ = inspect.Signature(own + shared)
    return body


def _pipeline_help(**own) -> dict:
    return {**own, **{name: text for name, (_, text) in FLAGS.items()}}


@task(
    auto_shortflags=False,
    help=_pipeline_help(
        resume="continue the latest interrupted or failed run, with the options it was started with, from the stage "
        "that did not finish (a new run record that names it)"
    ),
)
@_with_pipeline_flags
def pipeline_run(c, resume=False, **flags):
    """Run the pipeline once: convert, upload, train, evaluate, gate, deploy blue/green, smoke, load test.

    Stages whose inputs did not change are reused. Exit status: 0 deployed or nothing-to-do,
    3 rejected-by-gate, 4 rolled-back, 9 another run holds the lock, 10-18 failed:<stage>,
    2 a bad option (e.g. --resume with options other than the resumed run's).
    """
    from distracted_driver.pipeline.run import print_summary, run_pipeline

    settings = _settings(flags.pop("backend"))
    record = run_pipeline(settings, options_from_flags(resume=resume, **flags))
    print_summary(record)
    if record.exit_code:
        raise Exit(code=record.exit_code)


@task(
    help=f"""
    json: print the run records as JSON
    limit: only the last N runs (default all)
    plot: also draw seconds per stage of each run as a PNG at this path
    {BUCKET}
"""
)
def pipeline_history(c, json=False, limit=0, plot=None, backend=None):
    """List pipeline runs: outcome, model version, stage timings and the reason."""
    from distracted_driver.pipeline.report import plot_history
    from distracted_driver.pipeline.run import history_text

    settings = _settings(backend)
    records = RunStore(open_storage(settings), settings).history(limit or None)
    print(history_text(records, as_json=json))
    if plot:
        print(f"plot: {plot_history(records, plot)}", file=sys.stderr)


@task(
    auto_shortflags=False,
    help=_pipeline_help(
        interval="seconds between polls of raw/manifests/ (default 10)",
        max_runs="stop after starting this many runs (default: no limit)",
        timeout="stop after this many seconds, ending a run still going (default: no limit)",
    ),
)
@_with_pipeline_flags
def pipeline_watch(c, interval=10.0, max_runs=None, timeout=None, **flags):
    """Watch the bucket's raw-data manifests and run the pipeline when new data lands (one run at a time)."""
    from distracted_driver.pipeline.watch import watch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = _settings(flags.pop("backend"))
    runs = watch(
        settings,
        options_from_flags(**flags),
        interval=interval,
        max_runs=_optional(max_runs, int),
        timeout=_optional(timeout, float),
    )
    for run in runs:
        print(f"{run.run_id or '-'}: {run.outcome} (after {', '.join(run.manifests)})")


# --- infra (Terraform and the AWS backend) --------------------------------------------------------------------


@task(
    help="""
    checkov: also run checkov on terraform/ (default; --no-checkov for the wiring checks only)
    verbose: print every check, not only the failures
"""
)
def infra_check(c, checkov=True, verbose=False):
    """Checks of terraform/: wiring against the code (python-hcl2), Terraform core (fmt, loading every module; validate
    and terraform test where terraform and its providers are installed), the AWS provider's schema, IAM against AWS's
    action catalogue, then checkov with zero failures."""
    from distracted_driver.infra.commands import check_terraform

    if not check_terraform(_settings(), with_checkov=checkov, verbose=verbose):
        raise Exit("infra.check failed", code=1)


def _terraform(c, action, env, endpoint_exists, **options):
    """terraform ACTION for an environment, after packaging the Lambdas and terraform init where needed."""
    from distracted_driver.infra.commands import prepare_terraform
    from distracted_driver.infra.terraform import command

    settings = _settings("aws")
    exists, init = prepare_terraform(settings, env, endpoint_exists)
    if init:
        c.run(init)
    c.run(command(settings, action, env, endpoint_exists=exists, **options), pty=not options.get("auto_approve", True))


TERRAFORM = """
    env: environment: terraform/envs/<env>.tfvars (default dev)
    endpoint_exists: true/false: register autoscaling (default: look the endpoint up with boto3)
"""


@task(
    help=f"""{TERRAFORM}
    out: save the plan to this file (relative to terraform/)
"""
)
def infra_plan(c, env="dev", endpoint_exists=None, out=None):
    """terraform plan for an environment (runs terraform init first if needed)."""
    _terraform(c, "plan", env, endpoint_exists, plan_file=out)


@task(
    help=f"""{TERRAFORM}
    yes: apply without asking (CI)
"""
)
def infra_apply(c, env="dev", endpoint_exists=None, yes=False):
    """terraform apply for an environment, then write its outputs to .state/aws.env (see infra.outputs)."""
    _terraform(c, "apply", env, endpoint_exists, auto_approve=yes)
    infra_outputs(c)


@task(
    help=f"""{TERRAFORM}
    yes: destroy without asking
    keep_endpoint: leave the SageMaker endpoint (default: delete it first)
"""
)
def infra_destroy(c, env="dev", endpoint_exists=None, yes=False, keep_endpoint=False):
    """Delete the endpoint (the deploy task's, not Terraform's), then terraform destroy."""
    if not keep_endpoint:
        settings = _settings("aws")
        open_hosting(settings).delete()
        print(f"endpoint {settings.endpoint_name} deleted")
    _terraform(c, "destroy", env, endpoint_exists if keep_endpoint else False, auto_approve=yes)


@task(help="json: print the settings as JSON")
def infra_outputs(c, json=False):
    """Turn `terraform output -json` into the pipeline's settings: .state/aws.env, read by --backend aws."""
    from distracted_driver.infra.terraform import output_command, refresh_env_file

    settings = _settings()
    path, values = refresh_env_file(settings, jsonlib.loads(c.run(output_command(settings), hide="stdout").stdout))
    print(jsonlib.dumps(values, indent=2) if json else "\n".join(f"  {name}={value}" for name, value in values.items()))
    print(f"wrote {path}; the API key: terraform -chdir=terraform output -raw api_key")


@task(help="tag: image tag (default: the code version, i.e. the git commit)")
def infra_push_image(c, tag=None):
    """Build the model-server image (docker/serve.Dockerfile), push it to ECR, record it as DD_SERVING_IMAGE."""
    from distracted_driver.infra.commands import push_image_commands
    from distracted_driver.infra.terraform import record_serving_image

    settings = _settings("aws")
    image, commands = push_image_commands(settings, tag)
    for command in commands:
        c.run(command)
    print(f"pushed {image}" if commands else f"{image} is in ECR already (tags are immutable): not built, not pushed")
    print(f"serving image recorded in {record_serving_image(settings, image)}")


@task(
    help="""
    env: environment: terraform/envs/<env>.tfvars (default dev)
    build: inside CodeBuild: skip the source credential and the state bucket
"""
)
def infra_preflight(c, env="dev", build=False):
    """Before terraform apply: can this account take the env (identity, Lambda concurrency, SageMaker quotas,
    instance types offered, CodeBuild's GitHub credential, the state bucket)? Non-zero exit if not."""
    from distracted_driver.infra.preflight import preflight
    from distracted_driver.infra.terraform import terraform_dir

    report = preflight(terraform_dir(_settings("aws")), env, build=build)
    print(report)
    if not report.ok:
        raise Exit(f"preflight: apply or the first build would fail in this account ({env})", code=1)
    print(f"preflight: the account can take {env}")


@task
def infra_package(c):
    """Zip lambda/handler.py and lambda/trigger.py for Terraform (terraform/.build/); infra.plan and apply do it too."""
    from distracted_driver.infra.terraform import package_lambdas, terraform_dir

    for name, path in package_lambdas(terraform_dir(_settings())).items():
        print(f"{name}: {path}")


@task
def infra_docs(c):
    """Rewrite the inputs/outputs tables of terraform/'s READMEs from the .tf files (infra.check fails on stale ones)."""  # noqa: E501 - the first line is inv --list's summary
    from distracted_driver.infra import docs
    from distracted_driver.infra.terraform import terraform_dir

    print(
        "\n".join(f"rewrote {path}" for path in docs.write(terraform_dir(_settings()))) or "every README is up to date"
    )


# --- monitor --------------------------------------------------------------------------------------------------

SINCE = "since: the window: a duration before now (24h, 90m, 2d) or an ISO time (default 24h)"


@task(
    help=f"""
    {SINCE}
    variant: only this production variant's traffic (default: all)
    thresholds: drift thresholds file (default load_test/drift.toml)
    out: where the report folder goes (default reports/monitor)
    backend: local or aws (aws also puts the figures to CloudWatch)
"""
)
def monitor_report(c, since="24h", variant=None, thresholds=None, out=None, backend=None):
    """Drift of the captured traffic against the live model's baseline; exit 0 no drift, 3 drift, 1 too few requests."""
    from distracted_driver.monitor.report import drift_report, parse_since

    result = drift_report(
        _settings(backend),
        since=parse_since(since),
        variant=variant or None,
        thresholds=thresholds,
        out_root=out,
        progress=True,
    )
    print((result.directory / "summary.txt").read_text(), end="")
    print(f"report: {result.directory}")
    if result.exit_code:
        raise Exit(result.line, code=result.exit_code)


@task(
    help=f"""
    out: directory for the review batch (must not exist or be empty)
    {SINCE}
    variant: only this production variant's traffic (default: all)
    low_confidence_only: only answers below the low_confidence threshold of the drift thresholds file
    thresholds: drift thresholds file (default load_test/drift.toml)
    {BUCKET}
"""
)
def monitor_export(c, out, since="24h", variant=None, low_confidence_only=False, thresholds=None, backend=None):
    """Captured images as a State Farm-layout batch waiting for review; then inv data.add --from OUT."""
    from distracted_driver.monitor.export import export_window
    from distracted_driver.monitor.report import parse_since

    print(
        export_window(
            _settings(backend),
            out,
            since=parse_since(since),
            variant=variant or None,
            low_confidence_only=low_confidence_only,
            thresholds=thresholds,
        )
    )


# --- top level ------------------------------------------------------------------------------------------------


@task
def demo(c):
    """Run the main job end to end on generated sample data and leave the stack up."""
    from distracted_driver import demo as demo_job

    code = demo_job.run(_settings())
    if code:
        raise Exit(code=code)


@task
def down(c):
    """Stop every local server the demo started."""
    from distracted_driver import demo as demo_job

    demo_job.down(_settings())


ns = Collection(
    demo,
    down,
    Collection("data", data_sample, data_add, data_split, data_convert, data_upload),
    Collection("train", train_run, train_evaluate),
    Collection("model", model_list, model_gate, model_set_live),
    Collection("predict", predict_batch),
    Collection("serve", serve_run),
    Collection("api", api_up, api_down, api_status, api_key),
    Collection("loadtest", loadtest_run, loadtest_find_capacity),
    Collection(
        "deploy",
        deploy_create,
        deploy_swap,
        deploy_rollback,
        deploy_status,
        deploy_autoscale,
        deploy_capture,
        deploy_invoke,
        deploy_down,
    ),
    Collection("pipeline", pipeline_run, pipeline_history, pipeline_watch),
    Collection("monitor", monitor_report, monitor_export),
    Collection(
        "infra",
        infra_check,
        infra_docs,
        infra_package,
        infra_preflight,
        infra_plan,
        infra_apply,
        infra_destroy,
        infra_outputs,
        infra_push_image,
    ),
)
