"""invoke tasks: parse options, call the library. No logic lives here.

Every task takes ``--backend local|aws`` where it touches the bucket or the
endpoint (default ``local``; ``DD_BACKEND`` overrides). A task declares each
flag once, as a ``name=default: help`` line (``cli.flag_table``); the body
gets them as ``**flags``. How an expected failure ends (one line, a
documented exit status) is decided for every task by ``distracted_driver.cli``.
The imports inside task bodies load numpy, OpenCV, aiohttp, boto3 or Locust:
at the top they would make ``inv --list`` take 3 s instead of half a second.
"""

from __future__ import annotations

import dataclasses
import inspect
import json as jsonlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from invoke import Argument, Collection, Task
from invoke import task as invoke_task
from invoke.exceptions import Exit

from distracted_driver.cli import bad_value, explain, flag_help, flag_signature, flag_table, missing_arguments
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

    def __init__(self, body, *args, flags: str | dict = "", **kwargs):
        table = flags if isinstance(flags, dict) else flag_table(flags)
        body.__signature__ = flag_signature(table)
        kwargs.setdefault("positional", ())
        # named after the function, less its collection: model_set_live is model.set-live
        kwargs.setdefault("name", body.__name__.partition("_")[2].replace("_", "-") or body.__name__)
        super().__init__(body, *args, help=flag_help(table), **kwargs)

    def get_arguments(self, ignore_unknown_help=None):
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            if argument.kind in (int, float):
                argument.__class__ = _NumberArgument
            # -h stays help: invoke would hand it to a flag whose other letters are taken (data.sample's --shift);
            # and no flag gets "-" as its short form (deploy.swap's --max-p99-ms would: m, a and x are taken)
            argument.names = tuple(name for name in argument.names if len(name) > 1 or name.isalnum() and name != "h")
        return arguments

    def __call__(self, *args, **kwargs):
        # invoke passes every flag; a caller in Python (infra.apply calls infra.outputs) may pass a few
        for name, parameter in list(inspect.signature(self.body).parameters.items())[1:]:
            if parameter.default is not parameter.empty:
                kwargs.setdefault(name, parameter.default)
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


def task(flags: str | dict | Callable = "", **options):
    """``@task("name=default: help" lines, invoke's options)``, or a bare ``@task`` for a task without flags."""
    if callable(flags):
        return invoke_task(flags, klass=_Task)
    return invoke_task(klass=_Task, flags=flags, **options)


def _settings(backend: str | None = None) -> Settings:
    return Settings.from_env(backend=backend)


def _given(kind, **values):
    """The flags that were given, converted (a flag without a numeric default arrives as text, None or "")."""
    return {name: kind(value) for name, value in values.items() if value is not None and value != ""}


def _lines(lines):
    print("\n".join(lines))


def _json_or_lines(value, lines, as_json):
    print(jsonlib.dumps(value, indent=2, default=str) if as_json else "\n".join(lines))


BUCKET = "backend=None: local or aws bucket (default local)"
ENDPOINT = "backend=None: local (default) or aws"
LOCAL_ONLY = "backend=None: local only"

# --- data -----------------------------------------------------------------------------------------------------


@task("""
    out=None: directory to write the Kaggle layout into (default .work/sample, replaced on every run)
    drivers=26: number of drivers (subjects) to draw (default 26)
    images_per_class_driver=3: images of each class for each driver (default 3)
    test_images=40: unlabelled images under imgs/test (default 40)
    seed=0: random seed; the same seed gives the same bytes (default 0)
    first_driver=None: number of the first subject, e.g. 90 for p090, p091, ... (default: Kaggle's p002..p081)
    overwrite=False: replace OUT if it already holds a sample (never a directory that does not)
    workers=1: processes drawing in parallel, the same bytes whatever the number (default 1; 0: all cores)
    shift=None: draw every driver under a condition training never saw: night, angle (another camera mount) or
      cabin (another car); for drift tests
""")
def data_sample(c, out, first_driver, overwrite, shift, **flags):
    """Draw synthetic cabin images in the exact State Farm layout (imgs/, driver_imgs_list.csv, ...)."""
    from distracted_driver.data.channels import WorkDirs
    from distracted_driver.data.sample import generate_sample

    given = _given(int, first_driver=first_driver) | _given(str, shift=shift)
    print(generate_sample(out or WorkDirs.of(_settings()).sample, overwrite=overwrite or not out, **given, **flags))


@task(f"""
    from_: directory holding a Kaggle-layout batch (imgs/train/cN/*.jpg + driver_imgs_list.csv)
    {BUCKET}
""")
def data_add(c, from_, backend):
    """Add a labelled batch to the bucket's raw data and write a new data manifest (exit 2 if anything was refused
    or, in a batch exported by monitor.export, rows are not reviewed yet)."""
    from distracted_driver.data.ingest import add_data

    settings = _settings(backend)
    report = add_data(open_storage(settings), settings, from_)
    print(report)
    if report.left_out_line():
        raise Exit(report.left_out_line(), code=2)


@task("""
    root=None: Kaggle-layout root (driver_imgs_list.csv + imgs/train/cN/) or a plain cN/*.jpg tree (default
      .work/sample)
    out=None: where train.lst, validation.lst and split.json go (default .work/data/split)
    val_drivers=None: put this many whole drivers in validation
    val_fraction=None: put whole drivers holding about this share of the images in validation (default 0.2)
    fold=None: use fold K (0-based) of a grouped K-fold as validation
    folds=5: number of folds for --fold (default 5)
    seed=0: random seed for choosing drivers and shuffling train (default 0)
""")
def data_split(c, root, out, val_drivers, val_fraction, fold, folds, seed):
    """Split the images into train/validation by driver (no driver on both sides) and write MXNet .lst files."""
    from distracted_driver.data.channels import WorkDirs

    dirs = WorkDirs.of(_settings())
    given = _given(int, val_drivers=val_drivers, fold=fold) | _given(float, val_fraction=val_fraction)
    print(split_dataset(root or dirs.sample, out or dirs.lists, folds=folds, seed=seed, **given).summary())


@task("""
    lists=None: directory with train.lst / validation.lst (default .work/data/split)
    out=None: channel directory to write (default .work/data/converted)
    images=None: image root the .lst paths are relative to (default: from the split's split.json)
    resize=256: resize the shorter edge to this many pixels, 0 keeps the size (default 256)
    center_crop=False: crop the centred square first
    quality=None: JPEG quality 1-100 (default 95) or PNG compression 0-9 (default 3)
    encoding=".jpg": .jpg or .png (default .jpg)
    pass_through=False: store the source files' bytes unchanged (decoded only to check them; no resize)
    workers=0: worker processes (default: all cores)
    interpolation="linear": linear (im2rec's) or area (default linear)
""")
def data_convert(c, lists, out, images, quality, workers, **flags):
    """Convert the .lst files to RecordIO channels (.rec + .idx + .lst) and write manifest.json (im2rec's job)."""
    from distracted_driver.data.channels import WorkDirs
    from distracted_driver.data.convert import ConvertOptions, convert_lists

    dirs = WorkDirs.of(_settings())
    options = ConvertOptions(**flags, **_given(int, quality=quality))
    report = convert_lists(lists or dirs.lists, out or dirs.channels, options, workers or None, image_root=images)
    print(report.summary())


@task(f"""
    directory=None: channel directory to upload (default .work/data/converted)
    prefix=None: key prefix in the bucket (default data)
    {BUCKET}
""")
def data_upload(c, directory, prefix, backend):
    """Copy the channels and their manifest to the bucket (<prefix>/train/, <prefix>/validation/), skipping unchanged files."""  # noqa: E501 - the first line is inv --list's summary
    from distracted_driver.data.channels import WorkDirs, upload_channels

    settings = _settings(backend)
    storage, prefix = open_storage(settings), prefix or settings.data_prefix
    report = upload_channels(storage, directory or WorkDirs.of(settings).channels, prefix)
    print(f"{report} -> {storage.uri(prefix)}")


# --- train and model ------------------------------------------------------------------------------------------


@task("""
    epochs=40: maximum epochs (default 40; early stopping may end sooner)
    learning_rate=None: AdamW learning rate (default 3e-3 frozen, 3e-4 fine-tuning)
    mini_batch_size=32: images per step (default 32)
    image_size=224: network input size (default 224)
    freeze_backbone=True: frozen backbone: features once, head trained (default; --no-freeze-backbone fine-tunes
      all)
    augmentation=None: true/false (default: on when fine-tuning; frozen features are never augmented)
    seed=0: random seed (default 0)
    patience=5: early stopping: epochs without a better validation log loss (default 5)
    extra="": more script flags as key=value,key=value (e.g. dropout=0.3,weight-decay=1e-4)
    resume=None: name of a job that did not complete: continue it from its last checkpoint
    backend=None: local (default): a local job; aws: a SageMaker training job
    algorithm="script": aws only: script (default, scripts/train.py in the PyTorch container) or builtin
        (SageMaker's image-classification algorithm, GPU)
""")
def train_run(c, extra, resume, backend, algorithm, **hyperparameters):
    """Run scripts/train.py as a local SageMaker-style job on the bucket's channels; store and register the model."""
    script_flags = {name.replace("_", "-"): value for name, value in hyperparameters.items()}
    trainer = open_trainer(_settings(backend), algorithm=algorithm)
    job = trainer.train(script_flags | parse_key_values(extra), resume=resume)
    print(f"training job {job} completed")


@task(f"""
    model="latest": training job name, 'latest' or 'live' (default latest)
    out=None: report folder (default reports/models/<job>)
    {BUCKET}
""")
def train_evaluate(c, model, out, backend):
    """Re-evaluate a model's ONNX file on the validation channel (ONNX Runtime): metrics.json and PNG plots."""
    from distracted_driver.model.evaluate import evaluate_model, report_lines

    _lines(report_lines(*evaluate_model(_settings(backend), model, out)))


def _registry(backend):
    from distracted_driver.model.registry import Registry

    settings = _settings(backend)
    return Registry(open_storage(settings), settings)


@task(f"""
    json=False: print the registry entries as JSON
    {BUCKET}
""")
def model_list(c, json, backend):
    """List the registered model versions: the precision each serves and both precisions' validation scores; * live."""
    from distracted_driver.model.registry import version_listing

    print(version_listing(_registry(backend), as_json=json))


@task(f"""
    candidate="latest": training job name to judge, or 'latest' (default)
    tolerance=None: how much worse than the live model's validation log loss is allowed (default 0.05)
    baseline_fraction=None: with no live model: must be below this fraction of ln(10) (default 0.5)
    int8_tolerance=None: the precision rule's tolerance, e.g. 0.01,3% (default: DD_INT8_TOLERANCE, else 0.01,3%)
    json=False: print the decision as JSON
    {BUCKET}
""")
def model_gate(c, candidate, tolerance, baseline_fraction, int8_tolerance, json, backend):
    """Quality gate: score the candidate's served model on the validation set; exit 1 with the reason if rejected."""
    from distracted_driver.train.gate import judge

    limits = _given(float, tolerance=tolerance, baseline_fraction=baseline_fraction)
    decision = judge(_registry(backend), candidate, int8_tolerance=int8_tolerance, **limits)
    _json_or_lines(decision.to_dict(), decision.report_lines(), json)
    if not decision.passed:
        raise Exit(code=1)


@task(f"""
    job="latest": training job name (or 'latest')
    {BUCKET}
""")
def model_set_live(c, job, backend):
    """Point registry/live.json at a version by hand (deploy does this itself after a swap)."""
    print(f"live model: {_registry(backend).set_live(job, by='inv model.set-live')['job']}")


# --- predict / serve ------------------------------------------------------------------------------------------


@task(
    auto_shortflags=False,
    flags="""
    images: directory of JPEG/PNG images to classify (e.g. a Kaggle imgs/test); with --backend aws also
        s3://<bucket>/<transform prefix>/... (a directory is uploaded there first)
    model="latest": training job name, 'latest' (newest trained) or 'live' (deployed); default latest
    out="submission.csv": CSV to write in sample_submission.csv format (default submission.csv)
    batch_size=8: local: images per ONNX Runtime run (default 8: as fast as 32 on CPUs, a third of the memory)
    workers=0: local: decode threads (default: all cores); aws: threads checking and moving images (default 16)
    backend=None: local (this machine) or aws (SageMaker Batch Transform); default local
    instances=1: aws: instances of the transform job (default 1)
    instance_type="": aws: instance type (default: the serving type, or the next size Batch Transform offers)
    max_concurrent=8: aws: requests in flight to each instance, MaxConcurrentTransforms (default 8)
    max_payload_mb=6: aws: MaxPayloadInMB, the largest image a request carries (default 6)
""",
)  # auto_shortflags: invoke would give --max-payload-mb the short flag "-" (m, a and x are taken)
def predict_batch(c, images, model, out, backend, instance_type, **flags):
    """Classify images with a trained model and write a Kaggle submission CSV (here, or on SageMaker Batch Transform)."""  # noqa: E501 - the first line is inv --list's summary
    from distracted_driver.hosting.batch import BatchOptions
    from distracted_driver.hosting.batch import predict_batch as run

    options = BatchOptions(instance_type=instance_type or None, **flags)
    outcome = run(_settings(backend), model, images, out, options)
    _lines(outcome.lines)
    if outcome.error:
        raise Exit(outcome.error, code=1)


@task(f"""
    model="latest": training job name, 'latest' or 'live' (fetched from the bucket), or an unpacked model directory
    port=8080: port on 127.0.0.1 (default 8080; 0 picks a free one)
    max_batch_size=8: images per ONNX Runtime run (default 8)
    max_batch_delay_ms=5.0: longest wait for a batch to fill (default 5)
    {BUCKET}
""")
def serve_run(c, model, backend, **flags):
    """Run one model server in the foreground (SageMaker hosting contract); Ctrl-C drains and stops it."""
    from distracted_driver.model.cache import fetch_artifact
    from distracted_driver.serve import server

    model_dir = Path(model) if Path(model).is_dir() else fetch_artifact(_settings(backend), model).directory
    options = [f"--{name.replace('_', '-')}={value}" for name, value in flags.items()]
    sys.exit(server.main(["--model-dir", str(model_dir), *options]))


# --- api ------------------------------------------------------------------------------------------------------


@task(f"""
    port=None: port on 127.0.0.1 (default: the last one used, else 8088; 0 picks a free one)
    rate=None: usage-plan throttle: requests/s per API key (default: last used, else 200)
    burst=None: usage-plan throttle: burst per API key (default: last used, else 400)
    no_key=False: accept requests without an API key
    runtime_url=None: SageMaker Runtime URL to call (default: the local endpoint's, from deploy.status)
    {LOCAL_ONLY}: the gateway fronts the local endpoint
""")
def api_up(c, port, rate, burst, no_key, runtime_url, backend):
    """Start the local API Gateway (real Lambda handler in front of the endpoint) as a background daemon."""
    from distracted_driver.gateway import start_gateway, started_lines
    from distracted_driver.gateway.daemon import saved_plan

    settings = _settings(backend)
    limits = _given(float, rate=rate) | _given(int, burst=burst)
    plan = dataclasses.replace(saved_plan(settings), **limits, require_key=not no_key)
    _lines(started_lines(start_gateway(settings, runtime_url=runtime_url, plan=plan, **_given(int, port=port))))


@task(LOCAL_ONLY)
def api_down(c, backend):
    """Stop the local API Gateway daemon."""
    from distracted_driver.gateway import stop_gateway

    print("API stopped" if stop_gateway(_settings(backend)) else "API was not running")


@task(f"""
    json=False: print JSON (running, healthy, problem, url, api_key, endpoint, runtime_url, plan, pid, supervisor)
    {LOCAL_ONLY}
""")
def api_status(c, json, backend):
    """Where the local API is, whether the endpoint behind it serves, and a key to call it with."""
    from distracted_driver.gateway import gateway_status, status_lines

    status = gateway_status(_settings(backend))
    _json_or_lines(status, status_lines(status), json)


@task(f"""
    name="cli": a label for the key (default: cli)
    {LOCAL_ONLY}
""")
def api_key(c, name, backend):
    """Create a new API key and print it; the running gateway accepts it within a second."""
    from distracted_driver.gateway import create_api_key

    print(create_api_key(_settings(backend), name)["value"])


# --- loadtest -------------------------------------------------------------------------------------------------


@task(
    default=True,
    flags="""
    users=8: concurrent Locust users (default 8, at most 2000)
    spawn_rate=4.0: users started per second (default 4)
    run_time="20s": how long, e.g. 20s, 2m (default 20s, at most 1h)
    host=None: API base URL (default: the local API from api.status), e.g. the AWS stage URL
    api_key=None: x-api-key to send (default: DD_API_KEY, else the local API's key)
    slo=None: SLO file (default load_test/slo.toml)
    backend=None: local or aws settings
""",
)
def loadtest_run(c, slo, backend, **flags):
    """Run Locust headless against the API; exit non-zero naming each missed SLO. Reports in reports/loadtest/."""
    from distracted_driver.loadtest import SLO, run_loadtest

    result = run_loadtest(_settings(backend), slo=SLO.load(slo) if slo else None, **flags)
    _lines(result.report_lines())
    if result.misses:
        raise Exit("SLO missed:\n" + "\n".join(f"  {m}" for m in result.misses), code=1)


@task("""
    start_users=2: users in the first step (default 2)
    step_users=2: users added per step (default 2)
    max_users=32: stop after this many users (default 32)
    step_time="15s": length of each step (default 15s)
    safety_factor=0.5: share of the capacity autoscaling should aim at (default 0.5)
    instances=None: instances behind the endpoint (default: from deploy.status, else 1)
    host=None: API base URL (default: the local API)
    api_key=None: x-api-key to send
    backend=None: local or aws settings
""")
def loadtest_find_capacity(c, instances, backend, **flags):
    """Ramp users until failures pass 1% or p99 its SLO; report the highest sustainable RPS and autoscaling target."""
    from distracted_driver.loadtest import find_capacity

    _lines(find_capacity(_settings(backend), **flags, **_given(int, instances=instances)).report_lines())


# --- deploy ---------------------------------------------------------------------------------------------------


def _hosting(settings):
    return open_hosting(settings, on_event=lambda e: print(f"  [{e['elapsed']:7.2f} s] {e['message']}", flush=True))


def _release(backend, model, capture_percent, force, routing=TrafficRouting(), alarms=AlarmThresholds(), **options):
    """Deploy MODEL through ``hosting.release``: gate clearance (or --force), blue/green, smoke test, rollback."""
    from distracted_driver.hosting.release import release

    settings = _settings(backend)
    capture = parse_percent(capture_percent)
    hosting = _hosting(settings)
    options |= {"force": force, "by": "inv deploy --force", "capture_percent": capture, "log": print}
    done = release(settings, hosting, model, routing, alarms, **options)
    _report(done.report_lines(), done.result)


def _report(lines, result):
    _lines(lines)
    if not result.succeeded:
        raise Exit(code=1)


MODEL = "model=\"latest\": training job name, 'latest' (default) or 'live'"
RELEASE = f"""
    capture_percent=None: share of invocations to capture once the model is live, 0..100 (0: off); default: what
        the endpoint captures now (nothing when new), or DD_CAPTURE_PERCENT
    force=False: deploy even without a passing gate record (the override is written into the model's entry)
    {ENDPOINT}
"""


@task(f"""
    {MODEL}
    instances=1: model-server instances (default 1)
    {RELEASE}
""")
def deploy_create(c, **flags):
    """Create the endpoint with a gated model, then smoke-test it; refuses if it exists (use deploy.swap).

    Exit 3 when the model has no passing gate record (inv model.gate) and --force is not given."""
    _release(routing=TrafficRouting(strategy="all-at-once", bake_seconds=0), new_endpoint=True, **flags)


@task(f"""
    {MODEL}
    strategy="canary": all-at-once, canary (default) or linear
    canary_percent=10: canary: share of traffic sent to green first (default 10)
    linear_step_percent=25: linear: share of traffic moved per step (default 25)
    wait=30.0: seconds between traffic steps, alarms watched (default 30)
    bake=30.0: seconds with all traffic on green before blue is retired, alarms watched (default 30)
    termination_wait=0.0: extra seconds blue is kept after baking (default 0)
    max_execution=1800.0: roll back when the swap takes longer than this many seconds (default 1800)
    instances=1: instances for the new fleet (default 1; with autoscaling, blue's current count)
    max_error_rate=0.05: roll back when green's error rate (5xx) exceeds this share (default 0.05)
    max_p99_ms=2000.0: roll back when green's p99 latency exceeds this many ms (default 2000)
    alarm_window=60.0: seconds of requests the alarms look back over (default 60)
    {RELEASE}
""")
def deploy_swap(
    c,
    model,
    strategy,
    canary_percent,
    linear_step_percent,
    wait,
    bake,
    termination_wait,
    max_execution,
    instances,
    max_error_rate,
    max_p99_ms,
    alarm_window,
    capture_percent,
    force,
    backend,
):
    """Blue/green deploy of a gated model, then a smoke test that must get the gate's answers, else rollback.

    Exit 1 if it was rolled back or failed; exit 3 (nothing deployed) when the model has no passing gate record
    for the current validation set (inv model.gate) and --force is not given."""
    routing = TrafficRouting(strategy, canary_percent, linear_step_percent, wait, bake, termination_wait, max_execution)
    alarms = AlarmThresholds(max_error_rate, max_p99_ms, window_seconds=alarm_window)
    print(f"deploying {model} to {_settings(backend).endpoint_name} ({strategy})")
    _release(backend, model, capture_percent, force, routing, alarms, instances=instances)


@task(ENDPOINT)
def deploy_rollback(c, backend):
    """Send traffic back to the previous model: stops a swap in progress, or swaps back to the previous config."""
    result = _hosting(_settings(backend)).rollback()
    _report(result.report_lines(), result)


@task(f"""
    json=False: print the whole status as JSON
    {ENDPOINT}
""")
def deploy_status(c, json, backend):
    """Endpoint, variants, instances, live model version, autoscaling and the runtime URL for boto3."""
    from distracted_driver.hosting.report import status_lines

    status = _hosting(_settings(backend)).status()
    _json_or_lines(status.to_dict(), status_lines(status), json)


@task(f"""
    min_=1: fewest instances (default 1)
    max_=4: most instances (default 4)
    target=600.0: target invocations per instance per minute (default 600)
    scale_out_cooldown=60.0: seconds after a scale-out before the next one (default 60)
    scale_in_cooldown=300.0: seconds after any scaling before a scale-in (default 300)
    window=60.0: seconds the invocation rate is averaged over (default 60)
    off=False: remove the policy instead (instances stay as they are)
    {ENDPOINT}
""")
def deploy_autoscale(c, min_, max_, target, scale_out_cooldown, scale_in_cooldown, window, off, backend):
    """Target tracking on invocations per instance per minute for the endpoint's variant."""
    settings = _settings(backend)
    policy = None if off else ScalingPolicy(min_, max_, target, scale_out_cooldown, scale_in_cooldown, window)
    _hosting(settings).set_autoscaling(policy)
    print(f"autoscaling of {settings.endpoint_name}/{settings.variant_name}: {policy or 'off'}")


@task(f"""
    percent: share of invocations to capture from now on, 0..100 (0: off)
    {ENDPOINT}
""")
def deploy_capture(c, percent, backend):
    """Change the live endpoint's data capture; the files land under the bucket's capture prefix.

    Locally the router samples at once; on AWS a new endpoint config with the new DataCaptureConfig
    goes live (update_endpoint, all at once)."""
    from distracted_driver.hosting.report import capture_text

    settings = _settings(backend)
    capture = _hosting(settings).set_capture(parse_percent(percent, "--percent"))
    print(f"data capture of {settings.endpoint_name}: {capture_text(capture)}")


@task(f"""
    image: JPEG or PNG to classify
    variant=None: production variant to target (X-Amzn-SageMaker-Target-Variant)
    {ENDPOINT}
""")
def deploy_invoke(c, image, variant, backend):
    """Classify one image through the endpoint with boto3's sagemaker-runtime client; print the top classes."""
    from distracted_driver.hosting.report import invoke_lines

    _lines(invoke_lines(_hosting(_settings(backend)), image, variant))


@task(ENDPOINT)
def deploy_down(c, backend):
    """Delete the endpoint and stop the local runtime; no model server of ours keeps running."""
    settings = _settings(backend)
    _hosting(settings).delete()
    print(f"endpoint {settings.endpoint_name} deleted")


# --- pipeline -------------------------------------------------------------------------------------------------


@task(
    auto_shortflags=False,
    flags=flag_table("""
    resume=False: continue the latest interrupted or failed run, with the options it was started with, from the
        stage that did not finish (a new run record that names it)
""")
    | FLAGS,
)
def pipeline_run(c, backend, **flags):
    """Run the pipeline once: convert, upload, train, evaluate, gate, deploy blue/green, smoke, load test.

    Stages whose inputs did not change are reused. Exit status: 0 deployed or nothing-to-do,
    3 rejected-by-gate, 4 rolled-back, 9 another run holds the lock, 10-18 failed:<stage>,
    2 a bad option (e.g. --resume with options other than the resumed run's).
    """
    from distracted_driver.pipeline.run import print_summary, run_pipeline

    record = run_pipeline(_settings(backend), options_from_flags(**flags))
    print_summary(record)
    if record.exit_code:
        raise Exit(code=record.exit_code)


@task(f"""
    json=False: print the run records as JSON
    limit=0: only the last N runs (default all)
    plot=None: also draw seconds per stage of each run as a PNG at this path
    {BUCKET}
""")
def pipeline_history(c, json, limit, plot, backend):
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
    flags=flag_table("""
    interval=10.0: seconds between polls of raw/manifests/ (default 10)
    max_runs=None: stop after starting this many runs (default: no limit)
    timeout=None: stop after this many seconds, ending a run still going (default: no limit)
""")
    | FLAGS,
)
def pipeline_watch(c, interval, max_runs, timeout, backend, **flags):
    """Watch the bucket's raw-data manifests and run the pipeline when new data lands (one run at a time)."""
    from distracted_driver.pipeline.watch import watch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    limits = _given(int, max_runs=max_runs) | _given(float, timeout=timeout)
    for run in watch(_settings(backend), options_from_flags(**flags), interval=interval, **limits):
        print(f"{run.run_id or '-'}: {run.outcome} (after {', '.join(run.manifests)})")


# --- infra (Terraform and the AWS backend) --------------------------------------------------------------------


@task("""
    checkov=True: also run checkov on terraform/ (default; --no-checkov for the wiring checks only)
    verbose=False: print every check, not only the failures
""")
def infra_check(c, checkov, verbose):
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
    env="dev": environment: terraform/envs/<env>.tfvars (default dev)
    endpoint_exists=None: true/false: register autoscaling (default: look the endpoint up with boto3)
"""


@task(f"{TERRAFORM}    out=None: save the plan to this file (relative to terraform/)")
def infra_plan(c, env, endpoint_exists, out):
    """terraform plan for an environment (runs terraform init first if needed)."""
    _terraform(c, "plan", env, endpoint_exists, plan_file=out)


@task(f"{TERRAFORM}    yes=False: apply without asking (CI)")
def infra_apply(c, env, endpoint_exists, yes):
    """terraform apply for an environment, then write its outputs to .state/aws.env (see infra.outputs)."""
    _terraform(c, "apply", env, endpoint_exists, auto_approve=yes)
    infra_outputs(c)


@task(f"""{TERRAFORM}
    yes=False: destroy without asking
    keep_endpoint=False: leave the SageMaker endpoint (default: delete it first)
""")
def infra_destroy(c, env, endpoint_exists, yes, keep_endpoint):
    """Delete the endpoint (the deploy task's, not Terraform's), then terraform destroy."""
    if not keep_endpoint:
        settings = _settings("aws")
        open_hosting(settings).delete()
        print(f"endpoint {settings.endpoint_name} deleted")
    _terraform(c, "destroy", env, endpoint_exists if keep_endpoint else False, auto_approve=yes)


@task("json=False: print the settings as JSON")
def infra_outputs(c, json):
    """Turn `terraform output -json` into the pipeline's settings: .state/aws.env, read by --backend aws."""
    from distracted_driver.infra.terraform import output_command, refresh_env_file

    settings = _settings()
    path, values = refresh_env_file(settings, jsonlib.loads(c.run(output_command(settings), hide="stdout").stdout))
    _json_or_lines(values, [f"  {name}={value}" for name, value in values.items()], json)
    print(f"wrote {path}; the API key: terraform -chdir=terraform output -raw api_key")


@task("tag=None: image tag (default: the code version, i.e. the git commit)")
def infra_push_image(c, tag):
    """Build the model-server image (docker/serve.Dockerfile), push it to ECR, record it as DD_SERVING_IMAGE."""
    from distracted_driver.infra.commands import push_image_commands
    from distracted_driver.infra.terraform import record_serving_image

    settings = _settings("aws")
    image, commands = push_image_commands(settings, tag)
    for command in commands:
        c.run(command)
    print(f"pushed {image}" if commands else f"{image} is in ECR already (tags are immutable): not built, not pushed")
    print(f"serving image recorded in {record_serving_image(settings, image)}")


@task("""
    env="dev": environment: terraform/envs/<env>.tfvars (default dev)
    build=False: inside CodeBuild: skip the source credential and the state bucket
""")
def infra_preflight(c, env, build):
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

    _lines(f"{name}: {path}" for name, path in package_lambdas(terraform_dir(_settings())).items())


@task
def infra_docs(c):
    """Rewrite the inputs/outputs tables of terraform/'s READMEs from the .tf files (infra.check fails on stale ones)."""  # noqa: E501 - the first line is inv --list's summary
    from distracted_driver.infra import docs
    from distracted_driver.infra.terraform import terraform_dir

    rewritten = [f"rewrote {path}" for path in docs.write(terraform_dir(_settings()))]
    _lines(rewritten or ["every README is up to date"])


# --- monitor --------------------------------------------------------------------------------------------------

SINCE = 'since="24h": the window: a duration before now (24h, 90m, 2d) or an ISO time (default 24h)'
VARIANT = "variant=None: only this production variant's traffic (default: all)"
THRESHOLDS = "thresholds=None: drift thresholds file (default load_test/drift.toml)"


@task(f"""
    {SINCE}
    {VARIANT}
    {THRESHOLDS}
    out=None: where the report folder goes (default reports/monitor)
    backend=None: local or aws (aws also puts the figures to CloudWatch)
""")
def monitor_report(c, since, variant, thresholds, out, backend):
    """Drift of the captured traffic against the live model's baseline; exit 0 no drift, 3 drift, 1 too few requests."""
    from distracted_driver.monitor.report import drift_report, parse_since

    window = {"since": parse_since(since), "variant": variant or None}
    result = drift_report(_settings(backend), **window, thresholds=thresholds, out_root=out, progress=True)
    print((result.directory / "summary.txt").read_text(), end="")
    print(f"report: {result.directory}")
    if result.exit_code:
        raise Exit(result.line, code=result.exit_code)


@task(f"""
    out: directory for the review batch (must not exist or be empty)
    {SINCE}
    {VARIANT}
    low_confidence_only=False: only answers below the low_confidence threshold of the drift thresholds file
    {THRESHOLDS}
    {BUCKET}
""")
def monitor_export(c, out, since, variant, backend, **flags):
    """Captured images as a State Farm-layout batch waiting for review; then inv data.add --from OUT."""
    from distracted_driver.monitor.export import export_window
    from distracted_driver.monitor.report import parse_since

    print(export_window(_settings(backend), out, since=parse_since(since), variant=variant or None, **flags))


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
